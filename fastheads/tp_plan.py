"""The course's practical work as data: each question, and how it differs from the base run.

One place lists the experiments; `fastheads tp` runs them, sharing feature-store entries
between the ones that differ only in the head, the seed or the stopping rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fastheads.augment import PRESETS, AugmentSpec


@dataclass(frozen=True)
class Experiment:
    qid: str  # "Q1" ... ; ablation runs are "Q7-only-rotation" etc.
    title: str
    changes: dict = field(default_factory=dict)  # TrainConfig fields that differ from the base
    repeats: str = "one"  # "plan": the plan's --repeats; "ablation": the ablation repeats; "one"
    holdout: bool = False  # evaluate the kept model on the holdout set
    model_name: str = ""  # the file name the course uses for this model
    group: str = ""  # experiments of one group are compared in one table (the Q7 ablation)


# The transformations of the notebook's augmentation, by what the course's question 7 asks about.
TP = PRESETS["tp"]
TRANSFORMS: dict[str, dict] = {
    "rotation": {"rotation_range": TP.rotation_range},
    "shift": {"width_shift_range": TP.width_shift_range, "height_shift_range": TP.height_shift_range},
    "shear": {"shear_range": TP.shear_range},
    "zoom": {"zoom_range": TP.zoom_range},
    "flip": {"horizontal_flip": TP.horizontal_flip},
}


def only(name: str) -> AugmentSpec:
    return replace(AugmentSpec(), **TRANSFORMS[name])


def without(name: str) -> AugmentSpec:
    return replace(TP, **{k: getattr(AugmentSpec(), k) for k in TRANSFORMS[name]})


PLAN: list[Experiment] = [
    Experiment("Q1", "Last layer only, the notebook's augmentation, repeated",
               repeats="plan", model_name="vgg16_retrained_10flowers.keras"),
    Experiment("Q2", "Last two layers trainable (fc2 + new output)", {"train_layers": 2},
               model_name="vgg16_retrained_10flowers_2layers.keras"),
    Experiment("Q3", "v2: block5 removed, new 4096-4096 head on block4_pool", {"arch": "v2"},
               model_name="vgg16_v2_retrained_10flowers.keras"),
    Experiment("Q4", "Last two layers, 26 epochs", {"train_layers": 2, "epochs": 26},
               holdout=True, model_name="vgg16_retrained_10flowers_mejor.keras"),
    Experiment("Q6", "No augmentation (same preprocessing)", {"augment": PRESETS["none"]},
               holdout=True, model_name="vgg16_retrained_10flowers_noaug.keras"),
    Experiment("Q7", "The alternative augmentation (tp-q7)", {"augment": PRESETS["tp-q7"]},
               holdout=True, model_name="vgg16_retrained_10flowers_q7.keras"),
    *[Experiment(f"Q7-only-{t}", f"Only {t}", {"augment": only(t)}, repeats="ablation", group="ablation")
      for t in TRANSFORMS],
    *[Experiment(f"Q7-without-{t}", f"All but {t}", {"augment": without(t)}, repeats="ablation", group="ablation")
      for t in TRANSFORMS],
    Experiment("Q8", "EarlyStopping and checkpoint on TRAINING accuracy", {"monitor": "categorical_accuracy"},
               repeats="plan", model_name="vgg16_retrained_10flowers_trainacc.keras"),
]  # fmt: skip

QUESTIONS = ["Q1", "Q2", "Q3", "Q4", "Q5", "Q6", "Q7", "Q8"]


def select(only_ids: list[str] | None) -> list[Experiment]:
    """The experiments needed for the asked questions (Q5 needs Q4's model)."""
    if not only_ids:
        return list(PLAN)
    wanted = {q.upper() for q in only_ids}
    unknown = wanted - set(QUESTIONS)
    if unknown:
        from fastheads.errors import UserError

        raise UserError(f"--only: unknown question(s) {', '.join(sorted(unknown))}; use {','.join(QUESTIONS)}.")
    if "Q5" in wanted:
        wanted.add("Q4")
    return [e for e in PLAN if e.qid.split("-")[0] in wanted]
