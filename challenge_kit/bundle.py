"""The upload: one zip holding ``cifar100.pt`` and ``tinyimagenet.pt`` at its root, as the scorer reads it.

The scorer unzips the upload and reads ``{name}.pt`` for both datasets; a folder inside the zip, a missing
file or a subset export all end in a crash or a bad score. Zips come from strangers too: members are read
into memory (never extracted to a path the archive names), only the expected names at the root are read,
their size is capped before and while reading, and their content is loaded with ``weights_only``.
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from challenge_kit.core.contract import MAX_SUBMISSION_BYTES, SPECS, SUBMISSION, DatasetSpec
from challenge_kit.core.errors import CHECK_FAILED, DONE, KitFileError, KitValueError, first_line
from challenge_kit.core.folders import output_file
from challenge_kit.core.reading import load_torch_bytes, sha256
from challenge_kit.core.storage import json_bytes, temp_stream, write_bytes, write_together
from challenge_kit.core.submission import MANIFEST, check_shape, load_reference, read_manifest, submission_tensor
from challenge_kit.core.verify import FAIL, Report, verify_bytes, verify_path
from challenge_kit.export import versions
from evaluator.evaluate import Entry, missing_reason

MEMBERS: dict[str, DatasetSpec] = {spec.submission_file: spec for spec in SPECS.values()}  # scorer's order
MAX_MEMBER_BYTES = MAX_SUBMISSION_BYTES  # the largest set at float64 (verify warns, the scorer accepts), and records
MAX_ENTRIES = 64  # two are expected; a listing this long is not a submission
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same two files always give the same zip bytes
MANIFEST_SUFFIX = ".manifest.json"
ROOT_ONLY = f"a Track 1 zip holds only {' and '.join(MEMBERS)} at its root"
MISSING = f"missing: the scorer reads {' and '.join(MEMBERS)} at the zip's root and crashes without either"


def shown(name: str) -> str:
    """A member name as text safe to print: names come from the archive, terminal escapes included."""
    return name if name.isprintable() else ascii(name)


@dataclass
class ZipContents:
    """The expected members found at the zip's root, read into memory, and what else is wrong with the zip."""

    path: str
    members: dict[str, bytes] = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (member, problem)
    missing: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line per problem, missing members included, each naming the member."""
        found = self.problems + [(m, MISSING) for m in self.missing]
        return [f"{self.path}:{shown(m)}: {p}" for m, p in found]


def _entry_problem(info: zipfile.ZipInfo, files: set[str]) -> str | None:
    """What is wrong with one entry of the zip's listing, before anything of it is read."""
    name = info.filename
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or ".." in parts or ":" in (parts[0] if parts else ""):
        return "unsafe path (absolute, '..', a drive or a backslash): refused, nothing read"
    if info.is_dir():  # a folder holding files: those are named instead
        return None if any(f.startswith(name) for f in files) else f"a folder: {ROOT_ONLY}"
    if len(parts) > 1:
        if parts[-1] in MEMBERS:
            return (f"inside a folder: the scorer reads {parts[-1]} at the zip's root; zip the two files, not "
                    "their folder (`ddkit bundle` does)")
        return f"unexpected file: {ROOT_ONLY}"
    if name not in MEMBERS:
        return f"unexpected file: {ROOT_ONLY}"
    if info.flag_bits & 0x1:
        return "encrypted: the scorer cannot read it"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symbolic link, not a file"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"declares {info.file_size:,} bytes, more than a submission tensor ({MAX_MEMBER_BYTES:,} at most)"
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | str:
    """The member's bytes, or the problem reading it (at most ``MAX_MEMBER_BYTES`` are ever decompressed)."""
    try:
        with zf.open(info) as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError, EOFError) as e:
        return f"cannot be read from the zip, corrupt ({first_line(e)})"
    if len(data) > MAX_MEMBER_BYTES:
        return f"more than {MAX_MEMBER_BYTES:,} bytes once decompressed: not a submission tensor"
    return data


def read_zip(path: str | Path) -> ZipContents:
    """Read the zip's members in memory; KitFileError when it is not a readable zip at all."""
    path = Path(path)
    if not path.is_file():
        raise KitFileError(path, "no such file")
    contents = ZipContents(str(path))
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if any(i.filename.endswith("/data.pkl") for i in infos):
                raise KitFileError(path, f"is a torch file (torch.save), not a zip holding {' and '.join(MEMBERS)}; "
                                         "`ddkit bundle` makes one")
            if len(infos) > MAX_ENTRIES:
                raise KitFileError(path, f"holds {len(infos):,} entries: {ROOT_ONLY}")
            files = {i.filename for i in infos if not i.is_dir()}
            for info in infos:
                problem = _entry_problem(info, files)
                if problem is None and info.is_dir():
                    continue
                if problem is None and info.filename in contents.members:
                    problem = "appears twice in the zip"
                data = _read_member(zf, info) if problem is None else problem
                if isinstance(data, bytes):
                    contents.members[info.filename] = data
                else:
                    contents.problems.append((info.filename, data))
    except (zipfile.BadZipFile, OSError) as e:
        raise KitFileError(path, f"not a readable zip file ({first_line(e)})") from None
    in_folders = {PurePosixPath(m).name for m, _ in contents.problems}
    contents.missing = [m for m in MEMBERS if m not in contents.members and m not in in_folders]
    return contents


@dataclass
class BundleReport:
    """``verify`` of a zip: its structure problems (one line each) and each member's report."""

    path: str
    problems: list[str]
    members: dict[str, Report]

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.members.values())

    @property
    def exit_code(self) -> int:
        return DONE if self.ok else CHECK_FAILED

    def failures(self) -> list[str]:
        """Every reason the zip is not ready to upload, one line each, naming the member."""
        return self.problems + [f"{r.path}: {c.name}: {c.reason}" for r in self.members.values()
                                for c in r.checks if c.status == FAIL]

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "exit_code": self.exit_code, "problems": self.problems,
                "failures": self.failures(), "members": {name: r.to_dict() for name, r in self.members.items()}}


def verify_zip(path: str | Path) -> BundleReport:
    """Both members present at the root, nothing else, each passing every check against its full spec."""
    contents = read_zip(path)
    problems, reports = contents.lines(), {}
    for name, data in contents.members.items():
        try:
            reports[name] = verify_bytes(data, f"{path}:{name}", MEMBERS[name])
        except KitFileError as e:
            problems.append(str(e))
    return BundleReport(str(path), problems, reports)


# ------------------------------------------------------------------------------------------- building


def _export_file(source: Path) -> Path:
    if source.is_dir():
        found = [source / name for name in MEMBERS if (source / name).is_file()]
        if len(found) != 1:
            what = "both" if found else "neither"
            raise KitFileError(source, f"holds {what} of {' and '.join(MEMBERS)}; give the file itself")
        return found[0]
    if not source.is_file():
        raise KitFileError(source, "no such file or folder")
    return source


def checked_export(source: str | Path) -> tuple[DatasetSpec, Path, dict | None, Report]:
    """A make-submission folder or a ``.pt``: its challenge spec, file, export manifest and verify report.

    Refused (KitFileError): a subset export, a file changed since its manifest was written, and anything
    that fails ``verify`` against the full challenge spec.
    """
    pt = _export_file(Path(source))
    if pt.name not in MEMBERS:
        raise KitFileError(pt, f"name it {' or '.join(MEMBERS)}: the name tells the scorer the dataset")
    spec, manifest = MEMBERS[pt.name], read_manifest(pt)
    manifest = manifest if manifest is not None and manifest.get("file") == pt.name else None  # it describes pt
    if manifest is not None and not manifest.get("challenge_submission", False):
        shape = "x".join(map(str, spec.shape))
        raise KitFileError(pt, f"a subset export ({MANIFEST}: challenge_submission false), not a challenge "
                               f"submission: the scorer needs the full {shape} {spec.name} set")
    if manifest is not None and manifest.get("sha256") != sha256(pt):
        raise KitFileError(pt, f"differs from the sha256 its {MANIFEST} records: changed after export; export it again")
    report = verify_path(pt, spec=spec)
    if not report.ok:
        raise KitFileError(pt, f"fails verify against the full {spec.name} spec: " + "; ".join(
            f"{c.name}: {c.reason}" for c in report.checks if c.status == FAIL))
    return spec, pt, manifest, report


def manifest_path(zip_path: str | Path) -> Path:
    zip_path = Path(zip_path)
    return zip_path.with_name(zip_path.stem + MANIFEST_SUFFIX)


def _zip_writer(members: dict[str, bytes], out: Path, digest: dict) -> Callable[[Path], None]:
    """Fills a temporary file with the members stored at the root, fixed dates and modes; checked by reading
    it back; its sha256 goes to ``digest`` for the manifest written after it."""

    def write(tmp: Path) -> None:
        with temp_stream(tmp) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
                info.create_system, info.external_attr = 3, (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, data)
        back = read_zip(tmp)
        if back.problems or back.members != members:
            raise KitFileError(out, "the zip written does not read back as the two files; nothing written")
        digest["sha256"] = sha256(tmp)

    return write


def bundle(sources: list[str | Path], out: str | Path, *, overwrite: bool = False) -> dict:
    """Check both exports, write ``out`` (the zip) and its manifest beside it, together or not at all; return
    the manifest. An existing zip or manifest is replaced only with ``overwrite``."""
    out = Path(out)
    if out.suffix != ".zip":
        raise KitValueError(f"{out}: the upload must be a .zip file")
    if len(sources) != len(MEMBERS):
        raise KitValueError(f"give {len(MEMBERS)} exports, one per dataset ({', '.join(SPECS)}); got {len(sources)}")
    for target in (out, manifest_path(out)):
        output_file(target, overwrite=overwrite)
    chosen: dict[str, tuple[Path, dict | None, Report]] = {}
    for source in sources:
        spec, pt, manifest, report = checked_export(source)
        if spec.submission_file in chosen:
            raise KitValueError(f"{pt} and {chosen[spec.submission_file][0]} are both {spec.name}: "
                                "give one per dataset")
        chosen[spec.submission_file] = (pt, manifest, report)
    members = {name: chosen[name][0].read_bytes() for name in MEMBERS}
    manifest = {
        "file": out.name,
        "members": {name: {"sha256": hashlib.sha256(members[name]).hexdigest(), "bytes": len(members[name]),
                           "source": str(pt), "manifest": export, "verify": report.to_dict()}
                    for name, (pt, export, report) in chosen.items()},
        "versions": versions(),
    }
    write_together([(out, _zip_writer(members, out, manifest)),
                    (manifest_path(out), lambda tmp: write_bytes(tmp, json_bytes(manifest)))])
    return manifest


# ------------------------------------------------------------------------------------------- scoring


def zip_entries(path: str | Path, reference_dir: str | Path, *, partial: bool = False
                ) -> tuple[list[Entry], list[str]]:
    """What ``score_entries`` scores for a zip, in the scorer's order, and the names of missing members.

    Any structure problem fails (the first one named); a missing member fails unless ``partial``.
    """
    contents = read_zip(path)
    if contents.problems:
        (member, problem), more = contents.problems[0], len(contents.problems) - 1
        raise KitFileError(f"{path}:{shown(member)}", problem + (
            f" (and {more} more: `ddkit verify {path}` lists them)" if more else ""))
    if contents.missing and not partial:
        raise KitFileError(f"{path}:{contents.missing[0]}", missing_reason(SPECS.values()))
    entries = []
    for name, data in contents.members.items():
        spec, where = MEMBERS[name], f"{path}:{name}"
        images = submission_tensor(load_torch_bytes(data, where, SUBMISSION), where)
        check_shape(images, spec, where)
        reference = Path(reference_dir) / spec.reference_file
        entries.append(Entry(spec, images, *load_reference(reference, spec), where, str(reference)))
    return entries, [MEMBERS[m].name for m in contents.missing]
