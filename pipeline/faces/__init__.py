"""Photos and faces: decoding, detection, alignment to the FFHQ crop, and paste-back into the photo."""
