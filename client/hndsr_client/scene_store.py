"""Scene mode's chunk store: each finished chunk saved atomically beside the output, so an
interrupted run resumes without redoing it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hndsr_client.scene_plan import SceneError


class ChunkStore:
    """Finished chunk outputs in ``root`` (one ``.npy`` each, written atomically); the file names are
    the journal of an interrupted run. ``scene.json`` holds the settings they were made with."""

    META = "scene.json"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_file = None

    def path(self, chunk_id: int) -> Path:
        return self.root / f"c{chunk_id:06d}.npy"

    def open(self, meta: dict, fresh: bool = False) -> None:
        """Create the store, or reuse it when it was made with the same settings."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock()
        meta_path = self.root / self.META
        if fresh:
            for path in self.root.iterdir():
                if path.name != "lock":
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old != meta:
                self.close()
                changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise SceneError(
                    f"{self.root} holds chunks of an earlier run with other settings ({', '.join(changed)}); "
                    "pass --fresh to discard them or use the same settings to resume"
                )
        else:
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.replace(tmp, meta_path)
        for stale in self.root.glob("*.tmp"):
            stale.unlink()

    def _lock(self) -> None:
        """One run per output at a time (POSIX advisory lock, held until ``close``)."""
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return
        self._lock_file = open(self.root / "lock", "w")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise SceneError(f"another run is writing {self.root} (the same output)") from None

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def done(self) -> set[int]:
        return {int(p.stem[1:]) for p in self.root.glob("c*.npy")}

    def save(self, chunk_id: int, image: np.ndarray) -> None:
        tmp = self.path(chunk_id).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(image))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path(chunk_id))

    def load(self, chunk_id: int) -> np.ndarray:
        return np.load(self.path(chunk_id), mmap_mode="r")

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)
