"""Projected gradient descent (Madry et al. 2018), batched, Linf and L2, with per-example early
stop.

    result = pgd(model, x, y, eps=8 / 255)                          # one AttackResult
    results = pgd(model, x, y, eps=[1/255, 2/255, 4/255, 8/255])    # one per eps, one batch

What it does, per example:

* the clean image is checked first: an example the model already gets wrong is fooled at
  iteration 0 (``found_by = "clean"``) and is not attacked;
* each restart starts from a random point of the eps ball (uniform in the Linf cube; uniform
  in the L2 ball) drawn from a generator seeded by (seed, example id, restart), so an example's
  start does not depend on the batch it is in, the other eps, or the device;
* ``steps`` steps of size ``step_size`` (default 2.5 eps / steps, Madry et al.; a ``cosine``
  schedule decays it to 0) along the sign of the gradient (Linf) or the normalised gradient
  (L2), each followed by projection onto the eps ball and [0, 1];
* the loss is cross-entropy (``"ce"``), the difference-of-logits ratio of Croce & Hein 2020
  (``"dlr"``, scale-invariant) or the Carlini-Wagner margin (``"margin"``); ``targeted=True``
  with ``target`` labels minimises the distance to the target class instead;
* every iterate is checked: the first one the model gets wrong is kept as the adversarial
  example (its step count is ``iteration``). With ``early_stop`` (default) the example leaves
  the batch then; without, it keeps being stepped but the kept example and iteration are the
  same, so early stop changes speed, never an outcome (tested). The kept images are equal up
  to rounding: a CPU or cuDNN kernel may round a batch of 1-2 examples differently from a
  larger one, which can move an L2 step in the last bit (Linf steps use only the sign);
* restarts run only on examples no earlier restart fooled;
* several eps run in one batch (rows = eps x examples), each eps independently: an attack at
  8/255 does not reuse what 4/255 found, so a non-monotone accuracy curve stays visible as a
  sign of gradient masking (:mod:`attacks.checks`).

The result's ``pred`` is the model's prediction on the kept images in a final check, and
``fooled`` is that prediction being wrong: an example whose in-attack success does not survive
the re-check (a logit tie broken differently in another batch) counts as not fooled.

``eot`` > 1 averages each step's gradient over that many forward/backward passes (expectation
over transformation, for models with randomness). Gradients that are not finite are zeroed
(the step then does not move the example), and logits that are not finite count as fooled
(no prediction), as :func:`harness.predict.predict` stores them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attacks.base import ATTACKS, Attack, AttackResult, check_eps, check_norm
from harness.errors import HarnessError
from harness.predict import top1

LOSSES = ("ce", "dlr", "margin")
SCHEDULES = ("constant", "cosine")


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
        eps: float | Sequence[float], norm: str = "Linf", steps: int = 10,
        step_size: float | None = None, restarts: int = 1, random_start: bool = True,
        loss: str = "ce", targeted: bool = False, target: torch.Tensor | None = None,
        early_stop: bool = True, seed: int = 0,
        example_ids: Sequence[int] | np.ndarray | None = None, schedule: str = "constant",
        eot: int = 1, batch_size: int | None = None, dtype: torch.dtype | None = None,
        channels_last: bool = True, name: str = "pgd") -> AttackResult | list[AttackResult]:
    """Run PGD on images ``x`` (N, C, H, W) in [0, 1] with labels ``y``.

    Args:
        eps: radius in pixel space, or a sequence of radii (then a list of results, in order).
        norm: "Linf" or "L2".
        steps: gradient steps per restart (>= 1).
        step_size: per-step size (default 2.5 eps / steps; a relative ``step_size`` is not
            scaled by eps).
        restarts: random restarts (>= 1); restart r attacks what restarts < r did not fool.
        random_start: start from a random point of the ball (else from the clean image).
        loss: "ce", "dlr" or "margin".
        targeted: minimise the loss towards ``target`` (int64 (N,)) instead; success means
            predicting the target.
        early_stop: drop fooled examples from the batch.
        seed, example_ids: the random start of example i, restart r, is drawn from a generator
            seeded by (seed, example_ids[i], r); default ids 0..N-1.
        schedule: "constant" or "cosine" step sizes.
        eot: gradient samples averaged per step.
        batch_size: rows (eps x examples) attacked at once (default all).
        dtype: the model's input dtype (default: its first floating parameter's, else float32).
        channels_last: feed the model channels_last tensors.
        name: ``found_by`` label of fooled examples.

    Raises:
        HarnessError: bad eps, norm, steps, restarts, loss, schedule, or a model whose output
            has no gradient with respect to its input.
    """
    norm = check_norm(norm)
    many = isinstance(eps, (Sequence, np.ndarray)) or (isinstance(eps, torch.Tensor)
                                                        and eps.dim() > 0)
    values = [float(e) for e in eps] if many else [eps]
    if not values:
        raise HarnessError("no eps given")
    eps_list = [check_eps(e, norm) for e in values]
    for label, value in (("steps", steps), ("restarts", restarts)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise HarnessError(f"{label} must be an integer >= 1, got {value!r}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                   or batch_size < 1):
        raise HarnessError(f"batch size must be an integer >= 1, got {batch_size!r}")
    if loss not in LOSSES:
        raise HarnessError(f"unknown PGD loss {loss!r}; one of {', '.join(LOSSES)}")
    if schedule not in SCHEDULES:
        raise HarnessError(f"unknown step-size schedule {schedule!r}; one of "
                           f"{', '.join(SCHEDULES)}")
    if int(eot) < 1:
        raise HarnessError(f"eot must be >= 1, got {eot!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise HarnessError(f"step size must be a finite number > 0, got {step_size!r}")
    if targeted and (target is None or len(target) != len(x)):
        raise HarnessError("a targeted attack needs one target label per example")
    n = len(x)
    ids = np.arange(n, dtype=np.int64) if example_ids is None else np.asarray(example_ids,
                                                                              dtype=np.int64)
    if len(ids) != n or len(y) != n:
        raise HarnessError("x, y and example_ids must have one entry per example")
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                     torch.float32)
    x = x.detach().float()
    y = y.to(x.device, torch.long)
    goal = target.to(x.device, torch.long) if targeted else y
    e = len(eps_list)
    rows_x = x.repeat(e, 1, 1, 1)
    rows_y, rows_goal = y.repeat(e), goal.repeat(e)
    rows_eps = torch.tensor(eps_list, device=x.device).repeat_interleave(n)
    rows_id = np.tile(ids, e)
    state = _State(rows_x, rows_y.numel())
    run = _Runner(model, norm=norm, steps=int(steps), step_size=step_size,
                  loss=loss, targeted=targeted, early_stop=early_stop, schedule=schedule,
                  eot=int(eot), dtype=dtype, channels_last=channels_last)
    size = batch_size or max(len(rows_x), 1)   # no examples: empty results, no range(.., 0)
    for lo in range(0, len(rows_x), size):
        sl = slice(lo, lo + size)
        chunk = torch.arange(lo, min(lo + size, len(rows_x)), device=x.device)
        # Clean check: examples already wrong are fooled at iteration 0 and not attacked.
        with torch.no_grad():
            wrong = run.success(run.logits(rows_x[sl]), rows_y[sl], rows_goal[sl])
        state.mark(chunk[wrong], rows_x[sl][wrong], 0, "clean")
        for r in range(int(restarts)):
            todo = chunk[~state.fooled[chunk]]
            if len(todo) == 0:
                break
            idx_np = todo.cpu().numpy()
            start = _random_start(rows_x[todo], rows_eps[todo], rows_id[idx_np], seed, r, norm) \
                if random_start else torch.zeros_like(rows_x[todo])
            run.attack(state, todo, rows_x[todo], start, rows_y[todo], rows_goal[todo],
                       rows_eps[todo], name)
    # Final check: the prediction on the kept images decides (and is what a suite stores).
    with torch.no_grad():
        preds = torch.cat([run.predict(xb) for xb in state.x_adv.split(size)]
                          or [torch.empty(0, dtype=torch.long, device=x.device)])
    # No prediction (non-finite logits) counts as fooled, targeted or not.
    fooled = ((preds == rows_goal) if targeted else (preds != rows_y)) | (preds == -1)
    found = np.where(fooled.cpu().numpy(), state.found_by, "")
    iteration = torch.where(fooled, state.iteration, torch.full_like(state.iteration, -1))
    out = [AttackResult(x_adv=state.x_adv[i * n:(i + 1) * n], pred=preds[i * n:(i + 1) * n],
                        fooled=fooled[i * n:(i + 1) * n],
                        iteration=iteration[i * n:(i + 1) * n], found_by=found[i * n:(i + 1) * n])
           for i in range(e)]
    return out if many else out[0]


class _State:
    """Per row: the kept image, whether and when it was fooled, by what."""

    def __init__(self, x: torch.Tensor, rows: int) -> None:
        self.x_adv = x.clone()
        self.fooled = torch.zeros(rows, dtype=torch.bool, device=x.device)
        self.iteration = torch.full((rows,), -1, dtype=torch.long, device=x.device)
        self.found_by = np.full(rows, "", dtype=object)

    def mark(self, rows: torch.Tensor, images: torch.Tensor, iteration: int, by: str) -> None:
        if len(rows):
            self.x_adv[rows] = images.detach().float()
            self.fooled[rows] = True
            self.iteration[rows] = iteration
            self.found_by[rows.cpu().numpy()] = by


def _row_generator(seed: int, example: int, restart: int) -> torch.Generator:
    entropy = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(example) & 0xFFFFFFFFFFFF,
                                      int(restart)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def _random_start(x: torch.Tensor, eps: torch.Tensor, ids: np.ndarray, seed: int, restart: int,
                  norm: str) -> torch.Tensor:
    """Per-row perturbations drawn on the CPU from per-(seed, example, restart) generators:
    uniform in the Linf cube, or uniform in the L2 ball (Gaussian direction, radius eps U^(1/d))."""
    shape = x.shape[1:]
    d = int(np.prod(shape))
    out = []
    for ex in ids:
        g = _row_generator(seed, int(ex), restart)
        if norm == "Linf":
            out.append(torch.rand(shape, generator=g).mul_(2).sub_(1))
        else:
            v = torch.randn(shape, generator=g)
            r = torch.rand((), generator=g).pow(1.0 / d)
            out.append(v.mul_(r / v.norm().clamp_min(1e-12)))
    delta = torch.stack(out).to(x.device) * eps.view(-1, 1, 1, 1)
    return (x + delta).clamp_(0, 1) - x


class _Runner:
    def __init__(self, model, *, norm, steps, step_size, loss, targeted, early_stop, schedule,
                 eot, dtype, channels_last) -> None:
        self.model, self.norm, self.steps = model, norm, steps
        self.step_size, self.loss_name, self.targeted = step_size, loss, targeted
        self.early_stop, self.schedule, self.eot = early_stop, schedule, eot
        self.dtype, self.channels_last = dtype, channels_last

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x).float()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return top1(self.logits(x))

    def success(self, logits: torch.Tensor, y: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(logits).all(1)
        pred = logits.argmax(1)
        hit = (pred == goal) if self.targeted else (pred != y)
        return hit | ~finite

    def loss(self, logits: torch.Tensor, y: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Per-row loss the attack ascends."""
        if self.loss_name == "ce":
            ce = F.cross_entropy(logits, goal, reduction="none")
            return -ce if self.targeted else ce
        if self.loss_name == "margin":
            ref = goal
            z_ref = logits.gather(1, ref[:, None])[:, 0]
            other = logits.scatter(1, ref[:, None], float("-inf")).amax(1)
            return (z_ref - other) if self.targeted else (other - z_ref)
        # DLR (Croce & Hein 2020): margin scaled by the spread of the top logits.
        srt = logits.sort(1, descending=True).values
        z_y = logits.gather(1, y[:, None])[:, 0]
        if self.targeted:
            z_t = logits.gather(1, goal[:, None])[:, 0]
            return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        return -(z_y - other) / (srt[:, 0] - srt[:, 2] + 1e-12)

    def alpha(self, eps: torch.Tensor, t: int) -> torch.Tensor:
        base = eps * 2.5 / self.steps if self.step_size is None else torch.full_like(
            eps, self.step_size)
        if self.schedule == "cosine":
            base = base * 0.5 * (1 + math.cos(math.pi * t / self.steps))
        return base

    def gradient(self, xa: torch.Tensor, y, goal):
        """(logits of the first pass, loss gradient averaged over ``eot`` passes)."""
        grad, first = None, None
        for _ in range(self.eot):
            xa_ = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.logits(xa_)
                loss = self.loss(logits, y, goal)
                loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
                if not loss.requires_grad:
                    raise HarnessError("the model's output has no gradient with respect to its "
                                       "input (no autograd path): gradient attacks cannot run; "
                                       "use a black-box attack (square)")
                (g,) = torch.autograd.grad(loss.sum(), xa_, allow_unused=True)
            if g is None:
                raise HarnessError("the model's output does not depend differentiably on its "
                                   "input: gradient attacks cannot run; use a black-box attack")
            g = torch.nan_to_num(g.float(), nan=0.0, posinf=0.0, neginf=0.0)
            grad = g if grad is None else grad + g
            first = logits.detach() if first is None else first
        return first, grad / self.eot

    def step(self, xa, grad, x0, eps, alpha) -> torch.Tensor:
        a = alpha.view(-1, 1, 1, 1)
        e = eps.view(-1, 1, 1, 1)
        if self.norm == "Linf":
            xa = xa + a * grad.sign()
            xa = torch.minimum(torch.maximum(xa, x0 - e), x0 + e)
        else:
            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            xa = xa + a * grad / gn
            delta = xa - x0
            dn = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            xa = x0 + delta * torch.clamp(e / dn, max=1.0)
        return xa.clamp_(0, 1)

    def attack(self, state: _State, rows, x0, start, y, goal, eps, name) -> None:
        """One restart on ``rows`` (indices into the state), from ``x0 + start``.

        The working tensors hold only the examples still attacked: with early stop a fooled
        example is dropped from them (no gather/scatter of the full batch per step); without,
        it stays and is only masked out of the bookkeeping."""
        xa = (x0 + start).detach()
        live = torch.ones(len(rows), dtype=torch.bool, device=x0.device)
        for t in range(self.steps + 1):
            if t < self.steps:
                logits, grad = self.gradient(xa, y, goal)
            else:
                with torch.no_grad():
                    logits = self.logits(xa)
            hit = self.success(logits, y, goal) & live
            if hit.any():
                state.mark(rows[hit], xa[hit], t, name)
                live = live & ~hit
            if t == self.steps:
                state.x_adv[rows[live]] = xa[live].detach()   # never fooled: the last iterate
                return
            if self.early_stop and not live.all():
                if not live.any():
                    return
                keep = live.nonzero()[:, 0]
                rows, xa, grad, x0, y, goal, eps = (rows[keep], xa[keep], grad[keep], x0[keep],
                                                    y[keep], goal[keep], eps[keep])
                live = live[keep]
            xa = self.step(xa, grad, x0, eps, self.alpha(eps, t)).detach()


@ATTACKS.register("pgd", description="the harness's batched PGD (Linf/L2, CE/DLR/margin, "
                  "restarts, per-example early stop)")
class PGD(Attack):
    """:func:`pgd` bound to a threat model and settings, behind the :class:`Attack` interface."""

    name = "pgd"

    def __init__(self, *, norm: str = "Linf", eps: float = 8 / 255, steps: int = 10,
                 step_size: float | None = None, restarts: int = 1, random_start: bool = True,
                 loss: str = "ce", early_stop: bool = True, schedule: str = "constant",
                 eot: int = 1, batch_size: int | None = None) -> None:
        super().__init__(norm=norm, eps=eps)
        self.settings = dict(steps=steps, step_size=step_size, restarts=restarts,
                             random_start=random_start, loss=loss, early_stop=early_stop,
                             schedule=schedule, eot=eot, batch_size=batch_size)
        if loss not in LOSSES:
            raise HarnessError(f"unknown PGD loss {loss!r}; one of {', '.join(LOSSES)}")
        if int(steps) < 1 or int(restarts) < 1:
            raise HarnessError("steps and restarts must be at least 1")
        self.name = f"pgd-{loss}"

    def __call__(self, model, x, y, *, seed=0, example_ids=None) -> AttackResult:
        return pgd(model, x, y, eps=self.eps, norm=self.norm, seed=seed,
                   example_ids=example_ids, name=self.name, **self.settings)
