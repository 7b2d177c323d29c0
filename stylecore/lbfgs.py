"""torch's L-BFGS with the strong-Wolfe line search, stoppable between two of its iterations and resumable there.

`torch.optim.LBFGS.step` runs a whole budget of iterations in one call and keeps its
working values (search direction, step, last gradient and loss, evaluation counts) in
local variables, so no state_dict taken outside it can say where it stood. This is the
same `step` (torch 2.x's, operation for operation: same float operations in the same
order, so the same bits) with two additions that change no arithmetic: after every
iteration it goes on from, it offers `on_boundary` a function that returns everything it
would need to go on (its locals and its state), and `resume(saved)` makes the next
`step` continue from such a point instead of evaluating the closure afresh. A run stopped
at a boundary and resumed from it therefore makes exactly the evaluations, and computes
exactly the values, of a run never stopped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lbfgs import _strong_wolfe

Capture = Callable[[], dict]


class LBFGS(torch.optim.LBFGS):
    """`torch.optim.LBFGS` restricted to `line_search_fn="strong_wolfe"`, one dense real tensor, no `maximize`."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        if self.param_groups[0]["line_search_fn"] != "strong_wolfe" or self.param_groups[0].get("maximize"):
            raise ValueError("this L-BFGS supports the strong-Wolfe line search only, minimising")
        self.on_boundary: Callable[[Capture], None] | None = None
        self._resume: dict | None = None

    def resume(self, saved: dict) -> None:
        """Continue the next `step` from `saved`, what a boundary's capture returned (its tensors on the
        parameter's device)."""
        state = self.state[self._params[0]]
        state["func_evals"], state["n_iter"] = saved["func_evals"], saved["state_n_iter"]
        self._resume = saved

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = float(group["lr"])
        max_iter = group["max_iter"]
        max_eval = group["max_eval"]
        tolerance_grad = group["tolerance_grad"]
        tolerance_change = group["tolerance_change"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        saved, self._resume = self._resume, None
        if saved is None:
            # evaluate initial f(x) and df/dx
            orig_loss = closure()
            loss = float(orig_loss)
            current_evals = 1
            state["func_evals"] += 1

            flat_grad = self._gather_flat_grad()
            opt_cond = flat_grad.abs().max() <= tolerance_grad
            if opt_cond:
                return orig_loss

            d = state.get("d")
            t = state.get("t")
            old_dirs = state.get("old_dirs")
            old_stps = state.get("old_stps")
            ro = state.get("ro")
            H_diag = state.get("H_diag")
            prev_flat_grad = state.get("prev_flat_grad")
            prev_loss = state.get("prev_loss")
            n_iter = 0
        else:
            loss = orig_loss = saved["loss"]
            current_evals, n_iter = saved["current_evals"], saved["n_iter"]
            flat_grad, d, t = saved["flat_grad"], saved["d"], saved["t"]
            old_dirs, old_stps, ro = list(saved["old_dirs"]), list(saved["old_stps"]), list(saved["ro"])
            H_diag, prev_flat_grad, prev_loss = saved["H_diag"], saved["prev_flat_grad"], saved["prev_loss"]

        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1

            # compute gradient descent direction
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs = []
                old_stps = []
                ro = []
                H_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)

                num_old = len(old_dirs)
                if "al" not in state:
                    state["al"] = [None] * history_size
                al = state["al"]

                q = flat_grad.neg()
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q.add_(old_dirs[i], alpha=-al[i])

                d = r = torch.mul(q, H_diag)
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r.add_(old_stps[i], alpha=al[i] - be_i)

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # compute step length
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr
            else:
                t = lr

            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            x_init = self._clone_param()

            def obj_func(x, t, d):
                return self._directional_evaluate(closure, x, t, d)

            loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                obj_func, x_init, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
            )
            self._add_grad(t, d)
            opt_cond = flat_grad.abs().max() <= tolerance_grad

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals

            # check conditions
            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

            if self.on_boundary is not None:
                # Nothing captured here is changed in place later except prev_flat_grad (copied into) and the
                # parameter (stepped): those two are copied, the rest is shared.
                self.on_boundary(
                    lambda: {
                        "loss": loss, "current_evals": current_evals, "n_iter": n_iter, "flat_grad": flat_grad,
                        "d": d, "t": t, "old_dirs": list(old_dirs), "old_stps": list(old_stps), "ro": list(ro),
                        "H_diag": H_diag, "prev_flat_grad": prev_flat_grad.clone(), "prev_loss": prev_loss,
                        "state_n_iter": state["n_iter"], "func_evals": state["func_evals"],
                    }
                )

        state["d"] = d
        state["t"] = t
        state["old_dirs"] = old_dirs
        state["old_stps"] = old_stps
        state["ro"] = ro
        state["H_diag"] = H_diag
        state["prev_flat_grad"] = prev_flat_grad
        state["prev_loss"] = prev_loss

        return orig_loss
