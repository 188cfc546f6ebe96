// One edit from the device's point of view: upload the photo (unless the server already has it), create the
// edit with all strengths at once, then follow it until it ends. Cancel works in every phase. The photo may
// already be on its way (the app uploads it as soon as it is picked, to find its faces): then that upload is
// awaited instead of starting another.

import { ApiError, cancelEdit, createEdit, getEdit, uploadImage } from "./api.js";

const POLL_MS = 1000;
// While the first strength renders, look 4× a second: its preview stands in for it for about a second (the
// rest of that render), and it and the first full-size photo should show the moment they exist.
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class EditJob {
  /**
   * @param {object} request {photo, imageId, upload?, neutral, target | changes, faces?, alphas, beta, inversion?}
   *   upload: an upload of `photo` already running ({promise, abort, listen(onProgress)})
   * @param {object} hooks onUploaded(image), onCreated(edit), onUpdate({phase, fraction, position, edit}),
   *   onOutputs(edit) whenever the edit lists finished outputs (strengths arrive one by one),
   *   onPreview(edit) while the edit shows a preview of its first strength (`edit.preview`)
   */
  constructor(request, hooks) {
    this.request = request;
    this.hooks = hooks;
    this.canceled = false;
    this.upload = null;
    this.editId = null;
  }

  /** Resolves with the finished edit resource (succeeded, failed or canceled); rejects with ApiError. */
  async run() {
    let imageId = this.request.imageId;
    if (!imageId) {
      const report = (fraction) => this.hooks.onUpdate({ phase: "upload", fraction });
      report(0);
      if (this.request.upload) {
        this.upload = this.request.upload;
        this.upload.listen(report);
      } else {
        const { blob, filename } = this.request.photo;
        this.upload = uploadImage(blob, filename, report);
      }
      const image = await this.upload.promise;
      this.upload = null;
      imageId = image.id;
      this.hooks.onUploaded(image);
    }
    this.throwIfCanceled();
    const { neutral, target, changes, faces, alphas, beta, inversion } = this.request;
    const params = { image: imageId, alphas, beta, ...(changes ? { changes } : { neutral, target }) };
    if (faces !== undefined) params.faces = faces;
    if (inversion !== undefined) params.inversion = inversion;
    const edit = await createEdit(params);
    this.editId = edit.id;
    this.hooks.onCreated(edit);
    if (this.canceled) return cancelEdit(edit.id); // canceled while the create request was in flight
    return this.follow(edit);
  }

  /** Resume following an edit that already exists (opened from the history). */
  async resume(editId) {
    this.editId = editId;
    return this.follow(await getEdit(editId));
  }

  async follow(edit) {
    let failures = 0;
    while (!TERMINAL.has(edit.status)) {
      this.hooks.onUpdate(phaseOf(edit));
      if (edit.preview && this.hooks.onPreview) this.hooks.onPreview(edit);
      if (finishedCount(edit) && this.hooks.onOutputs) this.hooks.onOutputs(edit);
      await sleep(pollDelay(edit));
      if (this.canceled) break;
      try {
        edit = await getEdit(edit.id);
        failures = 0;
      } catch (err) {
        // A dropped connection or a rate limit on polling is not the edit's failure: wait and ask again.
        if (!(err instanceof ApiError) || !["network", "rate_limited", "unavailable"].includes(err.code)) throw err;
        if (++failures > 30) throw err;
        await sleep(1000 * Math.min(err.retryAfter || failures, 10));
      }
    }
    if (this.canceled && !TERMINAL.has(edit.status)) return this.cancelRequest;
    return edit;
  }

  /** Stop the upload or ask the server to cancel; resolves once the server has answered. */
  async cancel() {
    this.canceled = true;
    if (this.upload) this.upload.abort();
    if (this.editId) {
      this.cancelRequest = cancelEdit(this.editId).catch((err) => {
        // It may have finished in the meantime: the next GET shows the real end state.
        if (err.code === "not_found") throw err;
        return getEdit(this.editId);
      });
      return this.cancelRequest;
    }
    return null;
  }

  throwIfCanceled() {
    if (this.canceled) throw new ApiError("canceled", "Edit canceled.");
  }
}

/** How long to wait before asking again: strengths arriving (or the first one about to): look more often. */
export function pollDelay(edit) {
  if (edit.status !== "processing") return POLL_MS;
  return finishedCount(edit) ? POLL_MS / 2 : POLL_MS / 4;
}

/** How many strengths are finished (the edit lists their URLs while the rest are still null). */
export function finishedCount(edit) {
  return Array.isArray(edit.output) ? edit.output.filter(Boolean).length : 0;
}

/** Progress for the screen: queue position while starting, the worker's fraction while processing. */
export function phaseOf(edit) {
  if (edit.status === "processing") {
    return { phase: "processing", fraction: edit.progress ?? null, edit };
  }
  return { phase: "queued", position: edit.queue_position ?? null, edit };
}

export { TERMINAL };
