"""Datasets as users download them: one small :class:`DatasetLayout` per dataset, as data.

A new user unpacks ISPRS Potsdam, LoveDA or LandCover.ai and points the kit at the folder.  Each
dataset comes in its own release layout and, often, in the converted form that mmsegmentation's
``tools/dataset_converters`` write (``img_dir/{train,val}`` + ``ann_dir/{train,val}``, index
masks).  A layout lists those *forms*; each form says, as a regular expression on an image's path,
which files are images, and, as templates filled from that match, where its mask is, which scene
(group) it belongs to and which official split.  :func:`resolve_dataset` finds the first form
present under a folder and returns the kit's ordinary :class:`~.datasets.Pair` list plus the label
scheme of that form, so fine-tuning (``split_by_group``, ``label_budget``) works unchanged.

Scenes follow each dataset's literature, so that validation never shares a scene with training:
ISPRS by tile / area id (``2_10``, ``area1``), LoveDA by split + domain + image (each 1024² image is
its own scene), LandCover.ai by source orthophoto (``M-33-20-D-c-4-2``), Dubai by ``Tile_N``.

Assumptions, checked against mmsegmentation's converters (``tools/dataset_converters/potsdam.py``,
``vaihingen.py``, ``loveda.py``):

* ISPRS ``ann_dir`` masks store 0 = boundary / no label, 1..6 = impervious, building, low
  vegetation, tree, car, clutter (the converter maps BGR colours to these), which mmseg's
  ``reduce_zero_label`` turns into 0..5 + 255.  Scheme ``isprs_mmseg`` reads them the same way
  (and also ignores 255).  Masks already reduced to 0..5 + 255 would be shifted by one: convert
  them back (add 1, 255 → 0) or use the RGB release.
* The mmseg converters' ``val`` split of Potsdam (14 tiles) and Vaihingen (17 areas) is the ISPRS
  benchmark's test set; the release form uses the same lists.
* LoveDA ``ann_dir`` keeps the release values (0 = no-data, ignored; 1..7 classes); the converter
  drops the Urban/Rural domain, so converted scenes are ``split/image``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import ConfigError, DataError
from .datasets import Pair, find_pairs, first_per_group, split_by_group, split_test
from .io import TILE_SUFFIXES
from .labels import LabelScheme, get_scheme


@dataclass(frozen=True)
class Form:
    """One on-disk form of a dataset (its release, or a converted form).

    ``image``: regex searched in each file's POSIX path relative to the root (it must match up to
    the end; whatever precedes the match is a free prefix, so ``Train/Train/Urban/...`` from a
    nested unzip still works).  ``masks``: candidate mask paths, formatted with the match's named
    groups and taken relative to that prefix; a ``.*`` suffix means any tile suffix.  ``group`` and
    ``split``: templates of the scene and split (``split`` empty: from the layout's official lists
    or split files).  ``example`` is what error messages show as the expected layout.
    """

    name: str
    image: str
    masks: tuple[str, ...]
    scheme: str
    group: str
    example: str
    split: str = ""


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset: its forms (tried in order), official split, licence and where to get it."""

    name: str
    title: str
    forms: tuple[Form, ...]
    official_split: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # split → groups
    split_files: Mapping[str, str] = field(default_factory=dict)  # split → file listing tile ids
    licence: str = ""
    url: str = ""


@dataclass
class ResolvedDataset:
    """A folder read through a layout: pairs (``mask=None`` for images without labels), the
    scheme of the form found, and each pair's official split (``""`` where it has none)."""

    layout: DatasetLayout | None
    form: str
    root: Path
    pairs: list[Pair]
    scheme: LabelScheme
    splits: dict[str, str]  # pair id → split

    @property
    def labelled(self) -> list[Pair]:
        return [p for p in self.pairs if p.mask is not None]

    def split_names(self) -> list[str]:
        order = {"train": 0, "val": 1, "test": 2}
        return sorted({s for s in self.splits.values() if s}, key=lambda s: (order.get(s, 9), s))

    def split(self, name: str, labelled: bool = True) -> list[Pair]:
        return [p for p in (self.labelled if labelled else self.pairs) if self.splits.get(p.id) == name]


# mmsegmentation's converters' lists (tools/dataset_converters/potsdam.py, vaihingen.py).
POTSDAM_SPLIT = {
    "train": ("2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
              "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8", "7_9"),
    "val": ("5_15", "6_15", "6_13", "3_13", "4_14", "6_14", "5_14", "2_13", "4_15", "2_14", "5_13", "4_13",
            "3_14", "7_13"),
}
VAIHINGEN_SPLIT = {
    "train": ("area1", "area11", "area13", "area15", "area17", "area21", "area23", "area26", "area28", "area3",
              "area30", "area32", "area34", "area37", "area5", "area7"),
    "val": ("area6", "area24", "area35", "area16", "area14", "area22", "area10", "area4", "area2", "area20",
            "area8", "area31", "area33", "area27", "area38", "area12", "area29"),
}
_MMSEG_CLIP = r"_\d+_\d+_\d+_\d+"  # the converters' "{x0}_{y0}_{x1}_{y1}" crop suffix
_ISPRS_LICENCE = "research use only; data on request / registration with ISPRS WG II/4 (check the dataset page)"
_CC_BY_NC_SA = "CC BY-NC-SA 4.0"

LAYOUTS: dict[str, DatasetLayout] = {lay.name: lay for lay in (
    DatasetLayout(
        name="isprs_potsdam", title="ISPRS Potsdam",
        forms=(
            Form("mmseg", rf"img_dir/(?P<split>train|val|test)/(?P<stem>(?P<tile>\d+_\d+){_MMSEG_CLIP})\.png",
                 ("ann_dir/{split}/{stem}.png",), "isprs_mmseg", "{tile}",
                 "img_dir/train/2_10_0_0_512_512.png + ann_dir/train/2_10_0_0_512_512.png (mmseg potsdam.py)",
                 split="{split}"),
            *(Form(f"release_{bands}", rf"top_potsdam_(?P<tile>\d+_\d+)_{bands}\.tif",
                   ("**/top_potsdam_{tile}_label.tif", "**/top_potsdam_{tile}_label_noBoundary.tif"),
                   "isprs", "{tile}",
                   f"2_Ortho_{bands}/top_potsdam_2_10_{bands}.tif + 5_Labels_all/top_potsdam_2_10_label.tif "
                   "(ISPRS release)")
              for bands in ("RGB", "RGBIR", "IRRG")),
        ),
        official_split=POTSDAM_SPLIT, licence=_ISPRS_LICENCE,
        url="https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-potsdam.aspx"),
    DatasetLayout(
        name="isprs_vaihingen", title="ISPRS Vaihingen",
        forms=(
            Form("mmseg", rf"img_dir/(?P<split>train|val|test)/(?P<stem>(?P<tile>area\d+){_MMSEG_CLIP})\.png",
                 ("ann_dir/{split}/{stem}.png",), "isprs_mmseg", "{tile}",
                 "img_dir/train/area1_0_0_512_512.png + ann_dir/train/area1_0_0_512_512.png (mmseg vaihingen.py)",
                 split="{split}"),
            Form("release", r"top/top_mosaic_09cm_(?P<tile>area\d+)\.tif",
                 ("**/top_mosaic_09cm_{tile}.tif", "**/top_mosaic_09cm_{tile}_noBoundary.tif"),
                 "isprs", "{tile}",
                 "top/top_mosaic_09cm_area1.tif + gts_for_participants/top_mosaic_09cm_area1.tif (ISPRS release)"),
        ),
        official_split=VAIHINGEN_SPLIT, licence=_ISPRS_LICENCE,
        url="https://www.isprs.org/education/benchmarks/UrbanSemLab/2d-sem-label-vaihingen.aspx"),
    DatasetLayout(
        name="loveda", title="LoveDA",
        forms=(
            Form("release", r"(?P<split>Train|Val|Test)/(?P<domain>Urban|Rural)/images_png/(?P<stem>[^/]+)\.png",
                 ("{split}/{domain}/masks_png/{stem}.png",), "loveda", "{split}/{domain}/{stem}",
                 "Train/Urban/images_png/1366.png + Train/Urban/masks_png/1366.png (and Rural/, Val/, Test/)",
                 split="{split}"),
            Form("mmseg", r"img_dir/(?P<split>train|val|test)/(?P<stem>[^/]+)\.png",
                 ("ann_dir/{split}/{stem}.png",), "loveda", "{split}/{stem}",
                 "img_dir/train/0.png + ann_dir/train/0.png (mmseg loveda.py)", split="{split}"),
        ),
        licence=_CC_BY_NC_SA, url="https://github.com/Junjue-Wang/LoveDA"),
    DatasetLayout(
        name="landcover_ai", title="LandCover.ai v1",
        forms=(
            Form("tiles", r"output/(?P<stem>(?P<ortho>[^/]+)_(?P<k>\d+))\.jpg",
                 ("output/{stem}_m.png",), "landcover_ai", "{ortho}",
                 "output/M-33-20-D-c-4-2_0.jpg + output/M-33-20-D-c-4-2_0_m.png, train.txt/val.txt/test.txt "
                 "(split.py)"),
            Form("release", r"images/(?P<stem>[^/]+)\.tif", ("masks/{stem}.tif",), "landcover_ai", "{stem}",
                 "images/M-33-20-D-c-4-2.tif + masks/M-33-20-D-c-4-2.tif (release orthophotos)"),
        ),
        split_files={"train": "train.txt", "val": "val.txt", "test": "test.txt"},
        licence=_CC_BY_NC_SA, url="https://landcover.ai.linuxpl.com/"),
    DatasetLayout(
        name="dubai", title="Dubai aerial (Humans in the Loop / MBRSC)",
        forms=(
            Form("release", r"(?P<tile>Tile[ _]\d+)/images/(?P<stem>[^/]+)\.(?:jpg|png|tif)",
                 ("{tile}/masks/{stem}.png", "{tile}/masks/{stem}.*"), "dubai", "{tile}",
                 "Tile 1/images/image_part_001.jpg + Tile 1/masks/image_part_001.png (Kaggle release)"),
            Form("folders", r"images/(?P<tile>Tile[ _]\d+)/(?P<stem>[^/]+)\.(?:jpg|png|tif)",
                 ("masks/{tile}/{stem}.*", "labels/{tile}/{stem}.*"), "dubai", "{tile}",
                 "images/Tile_1/part_001.jpg + masks/Tile_1/part_001.png (the kit's folder layout)"),
        ),
        licence="CC0 1.0 (public domain)",
        url="https://www.kaggle.com/datasets/humansintheloop/semantic-segmentation-of-aerial-imagery"),
)}
DATASETS = ("", *LAYOUTS)  # "" = the generic images/ + masks/ folder


def get_layout(name: str) -> DatasetLayout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset '{name}'; choose one of {', '.join(LAYOUTS)} "
                          "(or leave it empty for a generic images/ + masks/ folder)") from None


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower() in TILE_SUFFIXES and not p.name.startswith("."))


def _find_mask(root: Path, prefix: str, image: str, templates: Sequence[str], fields: dict[str, str],
               exists: set[str], by_name: dict[str, list[str]]) -> Path | None:
    """The first candidate mask that exists.  ``**/NAME``: a file of that name anywhere under the
    root other than the image itself (the ISPRS releases unzip their label archives anywhere)."""
    for t in templates:
        if t.startswith("**/"):
            found = [r for r in by_name.get(t[3:].format(**fields), []) if r != image]
            if found:
                return root / found[0]
            continue
        rel = os.path.normpath(prefix + t.format(**fields)).replace(os.sep, "/")
        candidates = [rel[:-2] + s for s in TILE_SUFFIXES] if rel.endswith(".*") else [rel]
        for c in candidates:
            if c in exists and c != image:
                return root / c
    return None


def _match_form(root: Path, form: Form, files: list[str]) -> tuple[list[Pair], dict[str, str]]:
    exists, by_name = set(files), {}
    for f in files:
        by_name.setdefault(f.rsplit("/", 1)[-1], []).append(f)
    pattern = re.compile(r"(?:^|(?<=/))" + form.image + "$")
    pairs, splits = [], {}
    for rel in files:
        m = pattern.search(rel)
        if m is None:
            continue
        fields = {k: v or "" for k, v in m.groupdict().items()}
        prefix = rel[:m.start()]
        mask = _find_mask(root, prefix, rel, form.masks, fields, exists, by_name)
        pid = rel.rsplit(".", 1)[0]
        pairs.append(Pair(image=root / rel, mask=mask, group=form.group.format(**fields).replace(" ", "_"), id=pid))
        splits[pid] = form.split.format(**fields).lower() if form.split else ""
    return pairs, splits


def _split_files(root: Path, layout: DatasetLayout, pairs: list[Pair], splits: dict[str, str]) -> None:
    """Official splits listed in text files (LandCover.ai's train.txt ...: one tile stem a line),
    looked for at the root and beside the images' folder."""
    if not layout.split_files or not pairs:
        return
    dirs = [root, pairs[0].image.parent.parent]
    by_stem = {p.image.stem: p.id for p in pairs}
    for split, name in layout.split_files.items():
        f = next((d / name for d in dirs if (d / name).is_file()), None)
        if f is None:
            continue
        for line in f.read_text().split():
            pid = by_stem.get(Path(line.strip()).stem)
            if pid is not None:
                splits[pid] = split


def resolve_dataset(root: str | os.PathLike, dataset: str = "", scheme: str | LabelScheme = "samples") -> ResolvedDataset:
    """Read ``root`` as dataset ``dataset`` (``""``: the generic ``images/`` + ``masks/`` folder
    with ``scheme``); the first form of the layout with any image under ``root`` is used.

    An unrecognised folder is one :class:`DataError` that lists what was found and each form
    expected; so is a form whose images all lack their masks (naming where the masks were
    looked for)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder does not exist")
    if not dataset:
        pairs = find_pairs(root)
        return ResolvedDataset(None, "folder", root, pairs, get_scheme(scheme), {p.id: "" for p in pairs})
    layout = get_layout(dataset)
    files = _files(root)
    for form in layout.forms:
        pairs, splits = _match_form(root, form, files)
        if not pairs:
            continue
        if not any(p.mask is not None for p in pairs):
            p = pairs[0]
            fields = re.compile(r"(?:^|(?<=/))" + form.image + "$").search(p.image.relative_to(root).as_posix())
            looked = ", ".join(t.format(**{k: v or "" for k, v in fields.groupdict().items()}) for t in form.masks)
            raise DataError(f"{root}: {len(pairs)} {layout.title} image(s) in the {form.name} form but no mask for "
                            f"any; for {p.image.relative_to(root)} looked for {looked}")
        if not form.split and layout.official_split:
            of = {g: s for s, groups in layout.official_split.items() for g in groups}
            splits = {p.id: of.get(p.group, "") for p in pairs}
        _split_files(root, layout, pairs, splits)
        return ResolvedDataset(layout, form.name, root, pairs, get_scheme(form.scheme), splits)
    raise DataError(f"{root}: not a {layout.title} folder. Found {_summary(files, root)}. Expected one of: "
                    + "; ".join(f"{f.name}: {f.example}" for f in layout.forms))


def _summary(files: list[str], root: Path) -> str:
    """What is there, briefly: file counts per folder (top 6), or the top-level entries."""
    if not files:
        entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:8]
        return f"no image files (entries: {', '.join(entries) or 'none'})"
    dirs = Counter(f.rsplit("/", 1)[0] + "/" if "/" in f else "./" for f in files)
    example = {}
    for f in files:
        example.setdefault(f.rsplit("/", 1)[0] + "/" if "/" in f else "./", f.rsplit("/", 1)[-1])
    shown = ", ".join(f"{d} ({n}, e.g. {example[d]})" for d, n in dirs.most_common(6))
    more = f" and {len(dirs) - 6} more folder(s)" if len(dirs) > 6 else ""
    return f"{len(files)} image file(s) in {shown}{more}"


def train_val_pairs(dc) -> tuple[LabelScheme, list[Pair], list[Pair]]:
    """Fine-tuning's pairs from a :class:`~diffhrnet_lab.config.DataConfig`: the scheme, training
    and validation pairs.  With ``dc.dataset`` naming a dataset that has an official train/val
    split, that split is used (validation = official val), unless ``dc.val_groups`` is given;
    otherwise scenes are split with :func:`split_by_group` as for any folder.  The test scenes of
    ``dc.test_fraction`` (:func:`train_val_test_pairs`) are in neither."""
    scheme, train, val, _ = train_val_test_pairs(dc)
    return scheme, train, val


def train_val_test_pairs(dc) -> tuple[LabelScheme, list[Pair], list[Pair], list[Pair]]:
    """:func:`train_val_pairs` and the test pairs: ``dc.test_fraction`` of the scenes (of the
    official training split, for a dataset that has one), drawn before the validation split."""
    ds = resolve_dataset(dc.resolved_root(), getattr(dc, "dataset", ""), dc.scheme)
    pairs = first_per_group(ds.labelled, dc.max_per_group)
    fraction = getattr(dc, "test_fraction", 0.0)
    chosen = [*(dc.val_groups or ()), *(getattr(dc, "train_groups", None) or ())]
    train, val = ds.split("train"), ds.split("val")
    if dc.val_groups is None and train and val:
        keep = {p.id for p in pairs}
        train, test = split_test([p for p in train if p.id in keep], fraction, seed=dc.seed, keep=chosen)
        return ds.scheme, train, [p for p in val if p.id in keep], test
    pairs, test = split_test(pairs, fraction, seed=dc.seed, keep=chosen)
    train, val = split_by_group(pairs, dc.val_groups, dc.val_fraction, seed=dc.seed)
    return ds.scheme, train, val, test
