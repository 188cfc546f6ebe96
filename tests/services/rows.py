"""Rows a worker test starts from, written straight to the database: a stored photo with its `images` row,
and a `starting` edit of it (what `POST /v1/images` and `POST /v1/edits` would have left)."""

from __future__ import annotations

from datetime import timedelta

from common.models import Edit, Image, new_id, utcnow
from common.storage_layout import original_key


def stored_image(factory, storage, photo: bytes, owner: str = "alice", format: str = "jpeg") -> str:
    """Store `photo` as an original and add its row; returns the image id."""
    image = Image(id=new_id("img"), owner=owner, format=format, width=1, height=1, bytes=len(photo),
                  sha256="0" * 64)  # fmt: skip
    storage.put(original_key(image.id), photo, f"image/{format}")
    with factory() as session:
        session.add(image)
        session.commit()
    return image.id


def starting_edit(factory, image_id: str, owner: str = "alice", alphas=(1.0,), output_format: str = "jpeg",
                  neutral: str = "a face", target: str = "a smiling face", **fields) -> str:
    """A queued edit of `image_id` (one change, "a face" → "a smiling face", unless `changes` is given); its
    id."""
    fields = {"changes": [{"neutral": neutral, "target": target, "weight": 1.0}], **fields}
    edit = Edit(id=new_id("edt"), owner=owner, image_id=image_id, alphas=list(alphas), beta=0.15, mode="global",
                output_format=output_format, status="starting", attempt=0,
                deadline_at=utcnow() + timedelta(minutes=10), **fields)  # fmt: skip
    with factory() as session:
        session.add(edit)
        session.commit()
    return edit.id
