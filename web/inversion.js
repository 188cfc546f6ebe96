// The inversion switch, "Keep my likeness": on, the server inverts the photo with StyleFeatureEditor (sfe: the
// face stays the person's, slower); off, with e4e (fast, the face drifts a little). It starts at this server's
// default (/app-config.json's limits.default_inversion; `auto` is the most faithful one the server has) and,
// left alone, sends nothing, so the server's own default applies; once flipped, the edit names the choice.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
const MADE_WITH = {
  sfe: "Likeness kept: inverted with StyleFeatureEditor.",
  e4e: "Fast inversion (e4e): the face may drift a little from the person's.",
};

let flipped = false;

const UNAVAILABLE = "Not available right now: this server's editing machines don't have the likeness model " +
  "installed, so edits use the fast inversion.";

/**
 * Show the switch when this server's edit contract has SFE, set as its default says (once /app-config.json is
 * read). When the live workers are known and not all of them have SFE's model (`worker_inversions`), the switch
 * stays visible but off and disabled, with the reason, and the edit names no inversion.
 */
export function applyInversionChoice() {
  const { inversions = [], default_inversion: fallback } = api.limits();
  const offered = api.workerInversions();
  const unavailable = offered !== null && !offered.includes("sfe");
  $("likeness-choice").hidden = !inversions.includes("sfe");
  $("keep-likeness").disabled = unavailable;
  $("keep-likeness").checked = !unavailable && fallback !== "e4e";
  $("likeness-unavailable").hidden = !unavailable;
  $("likeness-unavailable").textContent = unavailable ? UNAVAILABLE : "";
}

export function initInversion() {
  $("keep-likeness").addEventListener("change", () => { flipped = true; });
}

/** The edit's `inversion`: the person's choice once they flipped the switch, else undefined (the default). */
export function inversionParam() {
  if (!flipped || $("keep-likeness").disabled) return undefined;
  return $("keep-likeness").checked ? "sfe" : "e4e";
}

/** The result's line on the inversion that made it (the server's resolved `input.inversion`). */
export function showMadeWith(edit) {
  const used = edit.input && edit.input.inversion;
  $("made-with").hidden = !MADE_WITH[used];
  $("made-with").dataset.inversion = used || "";
  $("made-with").textContent = MADE_WITH[used] || "";
}
