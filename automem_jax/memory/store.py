"""MemoryStore: one sandboxed directory of text files per episode, driven by a spec's ops.

Safety: a file name from the model is reduced to a basename only when that cannot leave the root (``notes/x.txt``
-> ``x.txt``); ``..``, absolute paths, ``~``, NUL/control characters, hidden names, device names and symlinks are
refused; reads open with O_NOFOLLOW and check the file is regular; writes go to a temp file in the root and are
renamed over the target (atomic). Every refusal leaves the directory unchanged and returns an ``[ERROR: ...]`` text
the model sees. Result texts and headers follow AutoMem's inner agent.

Writers: a mutating op holds an exclusive lock on the root for its read-modify-write, so threads or processes that
share a root (or one store) never lose each other's updates. Bytes: a file's existing bytes survive edits of other
parts (invalid UTF-8 included); op text must be valid Unicode (a lone surrogate is refused). Persistent memory is
merged, not overwritten, at the end of an episode (memory/persistent.py says how).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import stat
from pathlib import Path

from automem_jax.memory import persistent
from automem_jax.memory.persistent import atomic_write as _atomic_write
from automem_jax.memory.persistent import decode, dir_lock, encode
from automem_jax.memory.safe_regex import compile_regex
from automem_jax.memory.spec import FILE_NAME_RE, MemorySpec, OpSpec
# Windows device names (also refused on POSIX so a store copied to Windows stays valid).
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", "clock$"} | {f"com{i}" for i in range(10)}
                          | {f"lpt{i}" for i in range(10)})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines splits on


class StoreError(RuntimeError):
    """The store itself cannot be used (bad root); op-level problems are returned as text instead."""


class _Refused(Exception):
    pass


@dataclasses.dataclass
class OpResult:
    op: str
    header: str  # e.g. "SEARCH map.txt for 'tree'"
    text: str
    ok: bool
    mutated: bool = False

    @property
    def formatted(self) -> str:
        return f"── {self.header} ──\n{self.text}"

    def to_dict(self) -> dict:
        return {"op": self.op, "header": self.header, "result": self.text, "ok": self.ok}


class MemoryStore:
    def __init__(self, root: str | os.PathLike, spec: MemorySpec, *, persistent_dir: str | os.PathLike | None = None,
                 reset: bool = True):
        self.spec = spec
        self.root = Path(root)
        if self.root.is_symlink():
            raise StoreError(f"memory root {self.root} is a symlink; use a real directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._real_root = os.path.realpath(self.root)
        self.persistent_dir = Path(persistent_dir) if persistent_dir is not None else None
        self._base: dict[str, str] = {}  # the files this episode started from (the persistent merge's base)
        if reset:
            self.reset()

    # ----- lifecycle -----
    def reset(self) -> None:
        """Empty the root, then fill it from the persistent store (if it has files) or the spec's initial files."""
        with dir_lock(self._real_root):
            # Only files are removed: a mis-pointed root never loses a directory tree.
            for entry in os.scandir(self._real_root):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
            initial = {f.name: f.content for f in self.spec.files}
            if self.persistent_dir is not None:
                initial = persistent.load(self.persistent_dir) or initial
            for name, content in initial.items():
                self._write(name, content)
            self._base = dict(initial)

    def save_persistent(self) -> None:
        """Merge this episode's files into the persistent store with what concurrent episodes saved meanwhile
        (memory/persistent.py: their edits are kept, this episode's added lines are never lost)."""
        if self.persistent_dir is None:
            return
        with dir_lock(self._real_root, exclusive=False):
            ours = {name: self._read(name, raw=True) for name in self.list_files()}
        persistent.save(self.persistent_dir, self._base, ours)

    # ----- views -----
    def list_files(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self._real_root)
                      if not e.name.startswith(".") and e.is_file(follow_symlinks=False))

    def snapshot(self) -> dict[str, str]:
        return {name: self._read(name) for name in self.list_files()}

    def total_bytes(self) -> int:
        return sum(os.lstat(os.path.join(self._real_root, n)).st_size for n in self.list_files())

    def file_index(self) -> str:
        """AutoMem's index: one "  - name (N lines)" per file (empty or blank files count 0 lines)."""
        names = self.list_files()
        if not names:
            return "  (no files yet)"
        lines = []
        for name in names:
            content = self._read(name)
            lines.append(f"  - {name} ({len(content.splitlines()) if content.strip() else 0} lines)")
        return "\n".join(lines)

    # ----- ops -----
    def apply(self, op_name: str, args: str) -> str:
        """Run one op as the model wrote it; returns the result block the model sees (header + text)."""
        return self.run(op_name, args).formatted

    def run(self, op_name: str, args: str) -> OpResult:
        op = self.spec.op(op_name)
        if op is None:
            known = ", ".join(o.name for o in self.spec.ops)
            return OpResult(_short(op_name), _short(op_name),
                            f"[ERROR: unknown op {_short(op_name)}; known ops: {known}]", ok=False)
        try:
            try:
                args.encode("utf-8")
            except UnicodeEncodeError:
                raise _Refused("the text has characters that are not valid Unicode (a lone surrogate such as "
                               "\\ud800); write plain text") from None
            # a read-modify-write under the root's lock: concurrent writers of this root never lose an update
            with dir_lock(self._real_root) if op.mutating else contextlib.nullcontext():
                file_arg, rest = self._split_file(op, args)
                name = self._resolve(file_arg, must_exist=op.semantics not in ("append", "write", "create",
                                                                              "upsert_keyed"))
                return getattr(self, f"_op_{op.semantics}")(op, name, rest)
        except _Refused as e:
            return OpResult(op.name, f"{op.name} {_short(args)}", f"[ERROR: {e}]", ok=False)
        except OSError as e:  # the disk, not the model: the op fails, the episode goes on
            return OpResult(op.name, f"{op.name} {_short(args)}", f"[ERROR: {op.name} failed: "
                            f"{e.strerror or type(e).__name__}]", ok=False)

    # argument grammar: "file|rest" unless the op has a fixed file
    def _split_file(self, op: OpSpec, args: str) -> tuple[str, str]:
        args = args.strip()
        if op.file is not None:
            return op.file, args
        if op.semantics in ("read", "create", "delete"):
            return args, ""
        file_arg, sep, rest = args.partition("|")
        if not sep and op.semantics != "tail":
            raise _Refused(f"{op.name} needs {op.grammar}, got {_short(args)!r}")
        return file_arg, rest.strip()

    def _resolve(self, raw: str, *, must_exist: bool) -> str:
        """Validated basename inside the root. Raises _Refused with the reason."""
        name = raw.strip().strip("`'\"").strip()
        if not name:
            raise _Refused("missing file name")
        if _CONTROL.search(name):
            raise _Refused("file name contains control characters or NUL")
        name = name.replace("\\", "/")
        if name.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", name):
            raise _Refused(f"absolute paths are not allowed ({_short(raw)!r}); use a plain file name like notes.txt")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if any(p == ".." or ".." in p for p in parts):
            raise _Refused(f"'..' is not allowed in file names ({_short(raw)!r})")
        if not parts:
            raise _Refused(f"bad file name {_short(raw)!r}")
        for part in parts[:-1]:  # "dirlink/x.txt" must not look like a path through something in the root
            if os.path.lexists(os.path.join(self._real_root, part)):
                raise _Refused(f"{_short(raw)!r} goes through {part!r}; memory has no subdirectories")
        name = parts[-1]  # AutoMem reduces paths to the basename; only the memory root exists
        if not FILE_NAME_RE.match(name):
            raise _Refused(f"bad file name {_short(name)!r}: use letters, digits, _ . - (no leading dot, <= 64 chars)")
        if name.split(".")[0].lower() in _DEVICE_NAMES:
            raise _Refused(f"{name!r} is a reserved device name")
        if "." not in name and not self._exists(name) and self._exists(name + ".txt"):
            name += ".txt"  # "actions_log" -> "actions_log.txt"
        path = os.path.join(self._real_root, name)
        if os.path.islink(path):
            raise _Refused(f"{name!r} is a symlink; memory files must be regular files")
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise _Refused(f"{name!r} is not a regular file")
        if os.path.dirname(os.path.realpath(path)) != self._real_root:
            raise _Refused(f"{name!r} resolves outside the memory directory")
        if must_exist and not os.path.lexists(path):
            raise _Refused(f"file '{name}' does not exist")
        return name

    def _exists(self, name: str) -> bool:
        path = os.path.join(self._real_root, name)
        return os.path.lexists(path) and not os.path.islink(path)

    def _read(self, name: str, raw: bool = False) -> str:
        """The file's text: for the model (invalid UTF-8 shown as U+FFFD), or raw (bytes kept, for rewriting)."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(os.path.join(self._real_root, name), flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _Refused(f"{name!r} is a symlink; memory files must be regular files") from None
            raise _Refused(f"cannot read {name!r}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _Refused(f"{name!r} is not a regular file")
            data = f.read()
        return decode(data) if raw else data.decode("utf-8", errors="replace")

    def _write(self, name: str, content: str) -> None:
        _atomic_write(os.path.join(self._real_root, name), content, self._real_root)

    def _check_caps(self, name: str, new: str, old_size: int) -> None:
        fs = self.spec.file(name)
        cap = fs.max_bytes if fs else self.spec.default_file_bytes
        size = len(encode(new))
        if size > cap:
            raise _Refused(f"{name} would be {size} bytes, over its {cap}-byte cap; WRITE a shorter summary")
        if fs and fs.max_lines and len(new.splitlines()) > fs.max_lines:
            raise _Refused(f"{name} would have {len(new.splitlines())} lines, over its {fs.max_lines}-line cap; "
                           "WRITE a shorter summary")
        total = self.total_bytes() - old_size + size
        if total > self.spec.max_total_bytes:
            raise _Refused(f"memory would hold {total} bytes, over the {self.spec.max_total_bytes}-byte total cap; "
                           "shorten or WRITE a file smaller")
        if not self._exists(name) and len(self.list_files()) >= self.spec.max_files:
            raise _Refused(f"memory already holds {self.spec.max_files} files (the cap); reuse an existing file")

    def _fit(self, name: str, new: str) -> str:
        """Apply the file's drop_oldest policy: remove leading lines until byte/line caps hold."""
        fs = self.spec.file(name)
        if fs is None or fs.on_full != "drop_oldest":
            return new
        lines = new.splitlines(keepends=True)
        while len(lines) > 1 and (len(encode("".join(lines))) > fs.max_bytes
                                  or (fs.max_lines and len(lines) > fs.max_lines)):
            lines.pop(0)
        return "".join(lines)

    def _commit(self, name: str, new: str) -> None:
        old_size = os.lstat(os.path.join(self._real_root, name)).st_size if self._exists(name) else 0
        new = self._fit(name, new)
        self._check_caps(name, new, old_size)
        self._write(name, new)

    # ----- semantics (AutoMem's result texts) -----
    def _matches(self, name: str, kw: str) -> tuple[str, list[str]]:
        content = self._read(name)
        return content, [ln for ln in content.splitlines() if kw.lower() in ln.lower()]

    def _op_search(self, op: OpSpec, name: str, kw: str) -> OpResult:
        header = f"{op.name} {name} for '{kw}'"
        if not kw:
            raise _Refused(f"{op.name} needs a keyword: {op.grammar}")
        content, hits = self._matches(name, kw)
        if not content.strip():
            return OpResult(op.name, header, "[FILE IS EMPTY — no matches]", ok=True)
        if not hits:
            return OpResult(op.name, header, f"[No lines matching '{kw}']", ok=True)
        if len(hits) > op.max_results:
            text = f"[Showing last {op.max_results} of {len(hits)} matches for '{kw}']\n" + \
                   "\n".join(hits[-op.max_results:])
            return OpResult(op.name, header, text, ok=True)
        return OpResult(op.name, header, "\n".join(hits), ok=True)

    def _op_count(self, op: OpSpec, name: str, kw: str) -> OpResult:
        header = f"{op.name} {name} for '{kw}'"
        if not kw:
            raise _Refused(f"{op.name} needs a keyword: {op.grammar}")
        content, hits = self._matches(name, kw)
        if not content.strip():
            return OpResult(op.name, header, f"[0 matches for '{kw}' — file is empty]", ok=True)
        return OpResult(op.name, header, f"[{len(hits)} line(s) matching '{kw}']", ok=True)

    def _op_read(self, op: OpSpec, name: str, _rest: str) -> OpResult:
        content = self._read(name)
        return OpResult(op.name, f"{op.name} {name}", content if content.strip() else "[FILE IS EMPTY]", ok=True)

    def _op_tail(self, op: OpSpec, name: str, n_text: str) -> OpResult:
        try:
            n = int(n_text) if n_text else op.default_lines
        except ValueError:
            raise _Refused(f"{op.name} needs a line count: {op.grammar}, got {_short(n_text)!r}") from None
        n = max(1, min(n, op.max_lines))
        content = self._read(name)
        header = f"{op.name} {name} (last {n} lines)"
        if not content.strip():
            return OpResult(op.name, header, "[FILE IS EMPTY]", ok=True)
        return OpResult(op.name, header, "\n".join(content.splitlines()[-n:]), ok=True)

    def _op_append(self, op: OpSpec, name: str, note: str) -> OpResult:
        if not note:
            raise _Refused(f"{op.name} needs text: {op.grammar}")
        old = self._read(name, raw=True) if self._exists(name) else ""
        sep = "\n" if old and not old.endswith("\n") else ""
        self._commit(name, old + sep + note.rstrip("\n") + "\n")
        return OpResult(op.name, f"{op.name} to {name}", f"[Appended to {name}]", ok=True, mutated=True)

    def _op_write(self, op: OpSpec, name: str, content: str) -> OpResult:
        self._commit(name, content.rstrip("\n") + "\n" if content.strip() else "")
        return OpResult(op.name, f"{op.name} to {name}", f"[Wrote to {name}]", ok=True, mutated=True)

    def _op_create(self, op: OpSpec, name: str, _rest: str) -> OpResult:
        header = f"{op.name} {name}"
        if self._exists(name):
            return OpResult(op.name, header, f"[File '{name}' already exists]", ok=True)
        self._commit(name, "")
        return OpResult(op.name, header, f"[Created {name}]", ok=True, mutated=True)

    def _op_delete(self, op: OpSpec, name: str, _rest: str) -> OpResult:
        os.unlink(os.path.join(self._real_root, name))
        return OpResult(op.name, f"{op.name} {name}", f"[Deleted {name}]", ok=True, mutated=True)

    def _op_upsert_keyed(self, op: OpSpec, name: str, entry: str) -> OpResult:
        key, sep, text = entry.partition("|")
        if _LINE_BREAK.search(entry):  # an entry is one line: a line break would write a second, unkeyed line
            raise _Refused(f"{op.name} key and text must be one line, got {_short(entry)!r}; upsert each entry "
                           "separately")
        key = " ".join("".join(c for c in key if c not in op.key_ignore).split())
        if not sep or not key or not text.strip():
            raise _Refused(f"{op.name} needs {op.grammar} (key = text before the first '|'), got {_short(entry)!r}")
        if op.key_pattern and not compile_regex(op.key_pattern).fullmatch(key):
            raise _Refused(f"{op.name} key {key!r} does not match {op.key_grammar or op.key_pattern!r}")
        if op.line_format:
            line = op.line_format.replace("{key}", key).replace("{text}", text.strip())
            prefix = op.line_format.split("{text}")[0].replace("{key}", key)
            same = lambda ln: ln.startswith(prefix)  # noqa: E731
        else:
            line = f"{key}|{text.strip()}"
            same = lambda ln: " ".join(ln.partition("|")[0].split()) == key  # noqa: E731
        old = self._read(name, raw=True) if self._exists(name) else ""
        lines, replaced = [], False
        for ln in persistent.split_lines(old):  # split at "\n" only: every other line is rewritten as it was
            if same(ln):
                if not replaced:  # first entry for the key is replaced in place; duplicates dropped
                    lines.append(line)
                    replaced = True
                continue
            lines.append(ln)
        if not replaced:
            lines.append(line)
        self._commit(name, "\n".join(lines) + "\n")
        verb = "Updated" if replaced else "Added"
        return OpResult(op.name, f"{op.name} {name} key '{key}'", f"[{verb} '{key}' in {name}]", ok=True,
                        mutated=True)

    # ----- runtime writes (agent/runtime.py): kept files and prunes, under the same caps -----
    def write_file(self, name: str, content: str) -> str | None:
        """Overwrite a declared file from the runtime; returns an error text instead of raising."""
        try:
            with dir_lock(self._real_root):
                self._commit(self._resolve(name, must_exist=False), content)
        except _Refused as e:
            return f"[ERROR: {e}]"
        return None

    def read_file(self, name: str) -> str | None:
        return self._read(name) if self._exists(name) else None


def _short(text: str, n: int = 60) -> str:
    """One line of at most n chars of what the model wrote (lone surrogates replaced: results go into prompts)."""
    text = text[:4 * n].encode("utf-8", errors="replace").decode("utf-8").replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."
