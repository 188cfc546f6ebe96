// What each stable error code means to a person, and what they can do next.
// `action` names a button the app knows how to perform: photo, text, retry, settings, new.

const MESSAGES = {
  no_face: {
    title: "No face found",
    text: "We couldn't find a face in this photo. Use a photo where one face looks at the camera, well lit and not covered.",
    action: "photo",
  },
  face_too_small: {
    title: "The face is too small",
    text: "Move closer, or pick a photo where the face fills more of the picture.",
    action: "photo",
  },
  invalid_image: {
    title: "We can't read this photo",
    text: "The file may be damaged or not a picture. Take a new photo or choose another one.",
    action: "photo",
  },
  image_too_large: {
    title: "Photo too large",
    text: "This photo is bigger than the service accepts. Choose a smaller photo or take one at a lower resolution.",
    action: "photo",
  },
  unsupported_format: {
    title: "Unsupported file type",
    text: "Use a JPEG, PNG, WebP or HEIC photo.",
    action: "photo",
  },
  invalid_parameter: {
    title: "Check the texts",
    text: "Something in the request isn't accepted",
    action: "text",
    showServerMessage: true,
  },
  face_choice: {
    title: "Choose the faces again",
    text: "The faces you picked don't match this photo",
    action: "faces",
    showServerMessage: true,
  },
  empty_direction: {
    title: "Nothing to change",
    text: "The two texts mean the same thing. Describe a change in “What it should become”, e.g. “a smiling face”.",
    action: "text",
  },
  rate_limited: {
    title: "Too many requests",
    text: "You've made many requests in a short time. Wait a minute, then try again.",
    action: "retry",
  },
  queue_full: {
    title: "The service is busy",
    text: "Too many edits are waiting right now. Try again in a few minutes.",
    action: "retry",
  },
  unauthorized: {
    title: "Access key needed",
    text: "This app has no valid access key. Open Settings and paste the key you were given.",
    action: "settings",
  },
  forbidden: {
    title: "Not allowed",
    text: "This access key may not do that. Ask for a new key and paste it in Settings.",
    action: "settings",
  },
  not_found: {
    title: "Not found",
    text: "This photo or edit no longer exists: it may have been deleted or expired. Start a new edit.",
    action: "new",
  },
  timeout: {
    title: "The edit took too long",
    text: "The server didn't finish in time. Try again; if it keeps happening, try a smaller photo.",
    action: "retry",
  },
  canceled: {
    title: "Edit canceled",
    text: "Nothing was changed. Start again whenever you like.",
    action: null,
  },
  image_too_small: {
    title: "Photo too small",
    text: "This photo has too few pixels for a good edit. Use a larger, sharper photo.",
    action: "photo",
  },
  worker_lost: {
    title: "The edit was interrupted",
    text: "The server stopped while working on your photo. Try again.",
    action: "retry",
  },
  model_missing: {
    title: "The service isn't ready",
    text: "The editing models aren't installed on the server yet. Try again later.",
    action: "retry",
  },
  inversion_unavailable: {
    title: "Likeness mode isn't available",
    text: "The server can't keep your likeness right now (its editing machines lack that model). Turn off " +
      "\"Keep my likeness\" and try again.",
    action: null,
  },
  model_invalid: {
    title: "The service isn't ready",
    text: "The editing models on the server are damaged. Try again later.",
    action: "retry",
  },
  unavailable: {
    title: "The service is unavailable",
    text: "The server is restarting or overloaded. Try again in a minute.",
    action: "retry",
  },
  internal_error: {
    title: "Something went wrong on our side",
    text: "It's not your photo. Try again in a moment.",
    action: "retry",
  },
  network: {
    title: "No connection",
    text: "We couldn't reach the server. Check your internet connection, then try again.",
    action: "retry",
  },
};

// The API's more specific codes that mean the same thing to a person.
const ALIASES = {
  image_not_found: "not_found",
  edit_not_found: "not_found",
  output_not_found: "not_found",
  payload_too_large: "image_too_large",
  unsupported_media_type: "unsupported_format",
  validation_error: "invalid_parameter",
  bad_request: "invalid_parameter",
  face_out_of_range: "face_choice",
  too_many_faces: "face_choice",
  service_unavailable: "unavailable",
  image_file_missing: "not_found",
  broker_unavailable: "unavailable",
  not_ready: "unavailable",
};

const ACTION_LABELS = {
  photo: "Choose another photo",
  text: "Edit the text",
  retry: "Try again",
  settings: "Open Settings",
  new: "Start a new edit",
  faces: "Choose the faces",
};

/** A request refused because of its faces (an index the photo lacks, too many) reads as such, not as texts. */
function specificCode(code, message) {
  const general = ["invalid_parameter", "validation_error", "bad_request"].includes(code);
  return general && /face ind(ex|ices)|photo has \d+ faces?/i.test(message || "") ? "face_choice" : code;
}

/** {title, text, action, actionLabel} for an error {code, message}, with a wait hint for rate limits. */
export function describeError(error) {
  const code = (error && error.code) || "internal_error";
  const specific = specificCode(code, error && error.message);
  const known = MESSAGES[ALIASES[specific] || specific];
  const entry = known || {
    title: "Something went wrong",
    text: "Try again in a moment.",
    action: "retry",
    showServerMessage: true,
  };
  let text = entry.text;
  if (entry.showServerMessage && error && error.message) text = `${text}: ${error.message}`;
  if (error && error.retryAfter && entry.action === "retry") {
    text = `${text} (about ${Math.ceil(error.retryAfter)} s)`;
  }
  return { code, title: entry.title, text, action: entry.action, actionLabel: ACTION_LABELS[entry.action] };
}

export const ERROR_CODES = [...Object.keys(MESSAGES), ...Object.keys(ALIASES)];
