// Several changes in one edit: the main "What it should become" text plus rows added with "Add another
// change", each with its own text and weight. The presets fill whichever text field was used last.
// One change at weight 1 goes to the API in the simple form (neutral, target); more in the list form.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);
// The server's MAX_CHANGES_PER_EDIT (/app-config.json); one change, the form every server takes, until known.
const maxChanges = () => api.limits().max_changes ?? 1;

let active = null; // the text field the presets write into
let onChange = () => {};

const rows = () => [...document.querySelectorAll("#changes .change")];

/** The changes as the person set them: [{target, weight}] for every text field, empty ones included. */
function entries() {
  const main = { target: $("target").value.trim(), weight: weightOf($("weight-main")) };
  return [main, ...rows().map((row) => ({ target: row.querySelector(".change-target").value.trim(),
                                           weight: weightOf(row) }))];
}

const weightOf = (container) => Number(container.querySelector(".change-weight").value);

/** Non-empty changes with the shared "what the photo shows" text: [{neutral, target, weight}]. */
export function currentChanges(neutral) {
  return entries().filter((entry) => entry.target).map((entry) => ({ neutral, ...entry }));
}

/** The request fields for POST /v1/edits: {neutral, target} for one plain change, {changes} otherwise. */
export function changeParams(neutral) {
  const changes = currentChanges(neutral);
  if (changes.length === 1 && changes[0].weight === 1) return { neutral, target: changes[0].target };
  return { changes };
}

/** One line for titles and the history: "a smiling face + a face with blue hair (0.5×)". */
export function describeChanges(changes) {
  return changes.map((c) => (c.weight === 1 ? c.target : `${c.target} (${formatWeight(c.weight)})`)).join(" + ");
}

export function formatWeight(weight) {
  return `${String(weight).replace("-", "−")}×`;
}

/** The text field the presets fill. */
export const activeField = () => (active && active.isConnected ? active : $("target"));

/** Fill the active field with a preset. */
export function applyPreset(text) {
  activeField().value = text;
  onChange();
}

function addRow(text = "", weight = 1, focus = true) {
  const row = $("change-row").content.firstElementChild.cloneNode(true);
  const input = row.querySelector(".change-target");
  input.value = text;
  row.querySelector(".change-weight").value = String(weight);
  input.addEventListener("input", onChange);
  input.addEventListener("focus", () => (active = input));
  wireWeight(row);
  row.querySelector(".change-remove").addEventListener("click", () => {
    row.remove();
    if (active === input) active = null;
    renumber();
    onChange();
    $("target").focus();
  });
  $("changes").append(row);
  renumber();
  if (!focus) return;
  active = input;
  onChange();
  input.focus();
}

function wireWeight(container) {
  const slider = container.querySelector(".change-weight");
  let last = Number(slider.value);
  slider.addEventListener("input", () => {
    let weight = Number(slider.value);
    if (weight === 0) weight = last > 0 ? -0.25 : 0.25; // 0 changes nothing: jump across it
    slider.value = String(weight);
    last = weight;
    showWeight(container);
    onChange();
  });
  showWeight(container);
}

function showWeight(container) {
  const weight = weightOf(container);
  const text = weight < 0 ? `${formatWeight(weight)}, the opposite` : formatWeight(weight);
  container.querySelector(".weight-value").textContent = text;
  container.querySelector(".change-weight").setAttribute("aria-valuetext", text);
}

/** Labels follow the order; the main change's weight shows only when there is more than one change. */
function renumber() {
  rows().forEach((row, i) => {
    const n = i + 2;
    row.querySelector(".change-label").textContent = `Change ${n}`;
    row.querySelector(".change-remove").setAttribute("aria-label", `Remove change ${n}`);
    row.querySelector(".change-weight").setAttribute("aria-label", `Weight of change ${n}`);
  });
  const several = rows().length > 0;
  $("weight-main").hidden = !several;
  if (!several) {
    $("weight-main").querySelector(".change-weight").value = "1";
    showWeight($("weight-main"));
  }
  $("add-change").hidden = rows().length + 1 >= maxChanges();
}

/** Back to one change (a new photo keeps the texts; "start over" calls this). */
export function resetChanges() {
  for (const row of rows()) row.remove();
  active = null;
  renumber();
}

/** Show the changes of an earlier edit ([{target, weight}], the first in the main field). */
export function setChanges(changes) {
  resetChanges();
  if (!changes.length) return;
  $("target").value = changes[0].target;
  for (const change of changes.slice(1)) addRow(change.target, change.weight, false);
  $("weight-main").querySelector(".change-weight").value = String(changes[0].weight);
  showWeight($("weight-main"));
  onChange();
}

/** Apply the server's limits (api.limits(), once /app-config.json is read): text length, weight range, how many
 * changes. */
export function applyLimits() {
  const { max_text_chars: maxText, weight } = api.limits();
  const template = $("change-row").content;
  const texts = [$("neutral"), $("target"), ...template.querySelectorAll(".change-target"),
                 ...document.querySelectorAll("#changes .change-target")];
  if (maxText) for (const input of texts) input.maxLength = maxText;
  const sliders = [...template.querySelectorAll(".change-weight"), ...document.querySelectorAll(".change-weight")];
  if (weight) for (const slider of sliders) [slider.min, slider.max] = weight.map(String);
  renumber();
}

/** Wire the controls once at start-up; `changed()` runs after every edit of a text or weight. */
export function initChanges(changed) {
  onChange = changed;
  $("target").addEventListener("focus", () => (active = $("target")));
  wireWeight($("weight-main"));
  $("add-change").addEventListener("click", () => addRow());
  renumber();
}
