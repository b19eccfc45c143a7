"""Read an offline W&B run back from disk (tests only).

wandb >= 0.2x writes `run-<id>.wandb` from its Go core and no longer ships a Python reader; offline runs keep only
media under files/. The file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of chunks [crc32c:4][length:2 LE][type:1][payload], type 1 = full record, 2/3/4 = first/middle/last piece.
Each record is a serialized wandb_internal_pb2.Record.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
CHUNK_HEADER = 7


def _records(path: Path):
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = 7, b""
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        payload = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload
            pending = b""


@dataclass
class OfflineRun:
    path: Path
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    group: str = ""
    name: str = ""

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def values(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]

    @property
    def media(self) -> list[Path]:
        return sorted((self.path.parent / "files" / "media").rglob("*.png"))


def read_offline_run(wandb_file: Path) -> OfflineRun:
    run = OfflineRun(Path(wandb_file))
    for raw in _records(Path(wandb_file)):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            run.history.append(
                {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            )
        elif kind == "config":
            for item in rec.config.update:
                run.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            run.tags = list(rec.run.tags)
            run.group, run.name = rec.run.run_group, rec.run.display_name
    return run


def find_offline_runs(root: Path) -> list[OfflineRun]:
    return [read_offline_run(p) for p in sorted(Path(root).rglob("offline-run-*/run-*.wandb"))]
