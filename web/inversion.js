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

/** Show the switch when this server offers SFE, set as its default says (once /app-config.json is read). */
export function applyInversionChoice() {
  const { inversions = [], default_inversion: fallback } = api.limits();
  $("likeness-choice").hidden = !inversions.includes("sfe");
  $("keep-likeness").checked = fallback !== "e4e";
}

export function initInversion() {
  $("keep-likeness").addEventListener("change", () => { flipped = true; });
}

/** The edit's `inversion`: the person's choice once they flipped the switch, else undefined (the default). */
export function inversionParam() {
  if (!flipped) return undefined;
  return $("keep-likeness").checked ? "sfe" : "e4e";
}

/** The result's line on the inversion that made it (the server's resolved `input.inversion`). */
export function showMadeWith(edit) {
  const used = edit.input && edit.input.inversion;
  $("made-with").hidden = !MADE_WITH[used];
  $("made-with").dataset.inversion = used || "";
  $("made-with").textContent = MADE_WITH[used] || "";
}
