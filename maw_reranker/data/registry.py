"""Named datasets: ir_datasets ids, splits, primary metrics and the matching Pyserini prebuilt index."""

from __future__ import annotations

from dataclasses import dataclass, field

BEIR_MEASURES = ("nDCG@10", "R@100")
# TREC DL grades 0-3; only grade >= 2 counts as relevant for binary measures (the official convention).
TREC_DL_MEASURES = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@1000")
MSMARCO_MEASURES = ("RR@10", "R@1000")


@dataclass(frozen=True)
class DatasetSpec:
    """One named dataset. ``splits`` maps split name -> ir_datasets id; the first split is the default."""

    name: str
    splits: dict[str, str]
    measures: tuple[str, ...]
    description: str = ""
    pyserini_index: str | None = None  # Pyserini prebuilt Lucene index over the same corpus (same docids)
    remove_query: bool = False  # Anserini's -removeQuery (BEIR): drop a hit whose docid equals the qid
    aliases: tuple[str, ...] = field(default=())

    @property
    def default_split(self) -> str:
        return next(iter(self.splits))

    def irds_id(self, split: str | None = None) -> str:
        split = split or self.default_split
        if split not in self.splits:
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        return self.splits[split]


def _beir(name: str, splits: tuple[str, ...] = ("test",), description: str = "") -> DatasetSpec:
    # ir_datasets names single-split BEIR sets without a split suffix (beir/trec-covid).
    ids = {s: f"beir/{name}/{s}" for s in splits} if len(splits) > 1 else {splits[0]: f"beir/{name}"}
    return DatasetSpec(name=name, splits=ids, measures=BEIR_MEASURES, description=description or f"BEIR {name}",
                       pyserini_index=f"beir-v1.0.0-{name}.flat", remove_query=True)


_SPECS = [
    DatasetSpec("MSMARCO/dev-small", {"dev-small": "msmarco-passage/dev/small"}, MSMARCO_MEASURES,
                "MS MARCO passage dev small (6,980 queries, 8.8M passages)", "msmarco-v1-passage",
                aliases=("msmarco-dev-small", "msmarco-passage/dev/small")),
    DatasetSpec("MSMARCO/train", {"train": "msmarco-passage/train",
                                  "judged": "msmarco-passage/train/judged",
                                  "triples-small": "msmarco-passage/train/triples-small"}, MSMARCO_MEASURES,
                "MS MARCO passage training queries/qrels (triples-small also has docpairs)", "msmarco-v1-passage",
                aliases=("msmarco-train",)),
    DatasetSpec("TREC-DL-2019-passage", {"test": "msmarco-passage/trec-dl-2019/judged"}, TREC_DL_MEASURES,
                "TREC Deep Learning 2019 passage, judged queries (43)", "msmarco-v1-passage",
                aliases=("dl19", "trec-dl-2019")),
    DatasetSpec("TREC-DL-2020-passage", {"test": "msmarco-passage/trec-dl-2020/judged"}, TREC_DL_MEASURES,
                "TREC Deep Learning 2020 passage, judged queries (54)", "msmarco-v1-passage",
                aliases=("dl20", "trec-dl-2020")),
    _beir("scifact", ("test", "train"), "BEIR SciFact: scientific claim verification (5,183 docs)"),
    _beir("nfcorpus", ("test", "dev", "train"), "BEIR NFCorpus: nutrition/medical (3,633 docs)"),
    _beir("fiqa", ("test", "dev", "train"), "BEIR FiQA-2018: financial QA (57,638 docs)"),
    _beir("trec-covid", description="BEIR TREC-COVID (171,332 docs, 50 queries)"),
    _beir("scidocs", description="BEIR SCIDOCS: citation prediction (25,657 docs)"),
    _beir("arguana", description="BEIR ArguAna: counter-argument retrieval (8,674 docs)"),
    _beir("nq", description="BEIR Natural Questions (2.68M docs)"),
]

REGISTRY: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def list_datasets() -> list[DatasetSpec]:
    return list(REGISTRY.values())


def find_spec(name: str) -> tuple[DatasetSpec, str | None] | None:
    """Resolve ``name`` (case-insensitive, aliases, or ``name/split``) to (spec, split); None when unknown."""
    lowered = name.strip().lower()
    for spec in REGISTRY.values():
        if lowered == spec.name.lower() or lowered in (a.lower() for a in spec.aliases):
            return spec, None
        for split, irds_id in spec.splits.items():
            if lowered == irds_id:  # an ir_datasets id of a registered split
                return spec, split
    if "/" in lowered:
        base, split = name.strip().rsplit("/", 1)
        found = find_spec(base)
        if found and split in found[0].splits:
            return found[0], split
    return None


def get_spec(name: str) -> tuple[DatasetSpec, str | None]:
    found = find_spec(name)
    if found is None and "/" in name:
        base, split = name.strip().rsplit("/", 1)
        parent = find_spec(base)
        if parent is not None:
            parent[0].irds_id(split)  # raises: unknown split, naming the known ones
    if found is None:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(REGISTRY)} "
                         "(or give a path to a local BEIR folder, TSV/JSONL docs file, or candidates JSON)")
    return found
