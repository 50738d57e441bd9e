"""`maw-rerank push`: upload a saved model (or a training run's saved model) with its model card to the Hub."""

# No `from __future__ import annotations`: the options parser reads the field types at runtime.
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from maw_reranker.config.sections import opt

HELP = ("Upload a saved model folder (CrossEncoderWithMAW.save_pretrained, e.g. a training run's final/) or a training "
        "run folder's saved model to a Hugging Face Hub repo, private unless --no-private, with its model card "
        "(training recipe, MAW settings, evaluation results). CrossEncoderWithMAW.from_pretrained('namespace/name') "
        "loads it back. The token: HF_TOKEN, or `hf auth login`'s, or --token.")


@dataclass
class Options:
    model: str = opt("", "a saved model folder, or a training run folder (its final/ or best/: see run_model)")
    repo_id: str = opt("", "the Hub repo to push to, namespace/name (created when absent)")
    run_model: Literal["final", "best"] = opt("final", "in a training run folder: push final/ or best/ (the best "
                                                       "dev checkpoint)")
    private: bool = opt(True, "create the repo private (--no-private: public); an existing repo keeps its "
                              "visibility")
    commit_message: Optional[str] = opt(None, "commit message (default: one naming the MAW settings)")
    revision: Optional[str] = opt(None, "branch to push to (created from main when absent; default: main)")
    create_pr: bool = opt(False, "open a pull request instead of committing to the branch")
    token: Optional[str] = opt(None, "Hub token with write access (default: HF_TOKEN, else the one `hf auth login` "
                                     "saved; a token typed here stays in the shell history)")
    base_model: Optional[str] = opt(None, "card metadata: the hub id the model was fine-tuned from, when the card "
                                          "does not know it (training from a local folder)")
    license: Optional[str] = opt(None, "card metadata: the license (e.g. apache-2.0)")
    language: Optional[list[str]] = opt(None, "card metadata: language codes (e.g. en)")
    datasets: Optional[list[str]] = opt(None, "card metadata: hub ids of the training datasets")
    dry_run: bool = opt(False, "write the folder that would be uploaded to a temporary folder and list it; upload "
                               "nothing")

    def __post_init__(self) -> None:
        from maw_reranker.cross_encoder.card import is_hub_id
        from maw_reranker.cross_encoder.hub import check_repo_id

        if not str(self.model).strip():
            raise ValueError("option 'model' is empty: give a saved model folder or a training run folder")
        check_repo_id(self.repo_id)
        if self.base_model is not None and not is_hub_id(self.base_model):
            raise ValueError(f"option 'base_model': {self.base_model!r} is not a hub model id (namespace/name)")


def card_for(folder: Path, options: Options):
    """The card facts the folder keeps, with the metadata given on the command line put in."""
    from maw_reranker.cross_encoder.card import load_card_info

    card = load_card_info(folder)
    given = {k: getattr(options, k) for k in ("base_model", "license", "language", "datasets")}
    return card.replace(**{k: v for k, v in given.items() if v})


def run(options: Options) -> int:
    from maw_reranker.cross_encoder.hub import find_saved_model, stage
    from maw_reranker.cross_encoder.model import CrossEncoderWithMAW

    folder = find_saved_model(options.model, options.run_model)
    card = card_for(folder, options)
    model = CrossEncoderWithMAW.from_pretrained(folder, device="cpu")  # the folder must load before it is shared
    if options.dry_run:
        with tempfile.TemporaryDirectory(prefix="maw-push-") as tmp:
            staged = stage(model, options.repo_id, tmp, card)
            files = sorted(p for p in staged.rglob("*") if p.is_file())
            print(f"dry run: would push {folder} to {options.repo_id} ({'private' if options.private else 'public'}), "
                  f"{len(files)} files:")
            for path in files:
                print(f"  {path.relative_to(staged)}  {path.stat().st_size:,} bytes")
        return 0
    url = model.push_to_hub(options.repo_id, private=options.private, commit_message=options.commit_message,
                            token=options.token, revision=options.revision, create_pr=options.create_pr, card=card)
    print(f"pushed {folder} to {options.repo_id} ({'private' if options.private else 'public'} when created): {url}")
    print(f"  load it with CrossEncoderWithMAW.from_pretrained({options.repo_id!r})")
    return 0
