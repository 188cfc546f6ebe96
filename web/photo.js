// Getting a picked photo ready for upload: decode with its EXIF orientation, shrink it on the device when it
// is huge (phone cameras make 12–48 MP files; the model works on a 1024 px face), and make thumbnails.

const MAX_SIDE = 2048; // px, long side after downscaling
const MAX_BYTES = 2 * 1024 * 1024; // files above this are re-encoded even when their pixels fit
const JPEG_QUALITY = 0.9;

function isHeic(file) {
  return /image\/hei[cf]/i.test(file.type) || /\.(heic|heif)$/i.test(file.name || "");
}

/** Decode to something drawImage takes, with {width, height, close()}. Rejects when the browser can't. */
async function decode(blob) {
  try {
    // `from-image` applies the EXIF orientation, so a portrait phone photo stays upright after re-encoding.
    return await createImageBitmap(blob, { imageOrientation: "from-image" });
  } catch {
    // Older Safari lacks createImageBitmap options; an <img> decodes what the browser can show
    // (HEIC included on iOS) and honours EXIF orientation too.
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.src = url;
    try {
      await img.decode();
    } finally {
      URL.revokeObjectURL(url);
    }
    return { image: img, width: img.naturalWidth, height: img.naturalHeight, close() {} };
  }
}

const drawable = (decoded) => decoded.image || decoded;

function canvasBlob(bitmap, width, height, type = "image/jpeg", quality = JPEG_QUALITY) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(drawable(bitmap), 0, 0, width, height);
  return new Promise((resolve, reject) =>
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("encode failed"))), type, quality));
}

/**
 * Prepare a picked file. Resolves {blob, filename, preview (Blob | null), width, height, downscaled, heic}.
 * A photo the browser can't decode (HEIC outside Safari) goes up as is: the server converts it, and the app
 * shows a placeholder instead of a preview.
 */
export async function preparePhoto(file) {
  const heic = isHeic(file);
  let bitmap;
  try {
    bitmap = await decode(file);
  } catch {
    return { blob: file, filename: file.name || "photo", preview: null, width: null, height: null,
             downscaled: false, heic };
  }
  try {
    const { width, height } = bitmap;
    const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
    const needsShrink = scale < 1 || file.size > MAX_BYTES || heic;
    if (!needsShrink) {
      return { blob: file, filename: file.name || "photo", preview: file, width, height, downscaled: false, heic };
    }
    const w = Math.round(width * scale);
    const h = Math.round(height * scale);
    const blob = await canvasBlob(bitmap, w, h);
    const base = (file.name || "photo").replace(/\.[^.]+$/, "");
    return { blob, filename: `${base}.jpg`, preview: blob, width: w, height: h, downscaled: true, heic };
  } finally {
    bitmap.close();
  }
}

/** A small square-ish JPEG for the history list (cover crop, 160 px). Resolves null when undecodable. */
export async function thumbnail(blob, size = 160) {
  let bitmap;
  try {
    bitmap = await decode(blob);
  } catch {
    return null;
  }
  try {
    const side = Math.min(bitmap.width, bitmap.height);
    const canvas = document.createElement("canvas");
    canvas.width = size;
    canvas.height = size;
    const sx = (bitmap.width - side) / 2;
    const sy = (bitmap.height - side) / 2;
    canvas.getContext("2d").drawImage(drawable(bitmap), sx, sy, side, side, 0, 0, size, size);
    return await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.8));
  } finally {
    bitmap.close();
  }
}
