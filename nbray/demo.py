"""``nbray demo``: the RL rollouts notebook (``notebooks/02_rl_rollouts.ipynb``), headless.

A policy-gradient learner (an actor) trains a linear softmax policy on cart-pole dynamics
written in numpy; every iteration, rollout tasks run batches of episodes with the learner's
weights (put once, read by every task from shared memory) and return the returns and the
gradient. The learner averages the gradients and steps.

It shows a progress bar, then a summary: the learning curve's start and end, the speedup of
the rollouts over running them serially in this process, and the task latency. It writes an
HTML report (bokeh: the learning curve, latency by phase, the task graph) and a timeline
(Chrome trace) to ``--out``.

Run it with ``nbray demo`` or ``python -m nbray.demo``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from tqdm import tqdm

import nbray

# cart-pole: a pole hinged on a cart that moves on a track; the policy pushes left or right
GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, FORCE, DT = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
MAX_STEPS = 200
LIMIT_X, LIMIT_THETA = 2.4, 12 * np.pi / 180


def cartpole_step(s: np.ndarray, push_right: np.ndarray) -> tuple:
    """One step of a batch of cart-poles (rows of x, velocity, angle, angular velocity);
    returns the new states and which of them fell."""
    x, v, theta, omega = s.T
    force = np.where(push_right, FORCE, -FORCE)
    cos, sin = np.cos(theta), np.sin(theta)
    mass = CART_MASS + POLE_MASS
    tmp = (force + POLE_MASS * HALF_LENGTH * omega ** 2 * sin) / mass
    alpha = (GRAVITY * sin - cos * tmp) / (
        HALF_LENGTH * (4 / 3 - POLE_MASS * cos ** 2 / mass))
    acc = tmp - POLE_MASS * HALF_LENGTH * alpha * cos / mass
    s = np.stack([x + DT * v, v + DT * acc, theta + DT * omega, omega + DT * alpha], axis=1)
    return s, (np.abs(s[:, 0]) > LIMIT_X) | (np.abs(s[:, 2]) > LIMIT_THETA)


def run_episodes(weights: np.ndarray, seed: int, episodes: int, gamma: float = 0.99) -> tuple:
    """``episodes`` episodes side by side; returns (their returns, the REINFORCE gradient of
    the policy's weights, with normalised returns-to-go as advantages)."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(-0.05, 0.05, size=(episodes, 4))
    alive = np.ones(episodes, bool)
    trace = []                                  # (states, actions, probabilities, alive)
    for _ in range(MAX_STEPS):
        logits = s @ weights[:4] + weights[4]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        a = (rng.random(episodes) < p[:, 1]).astype(int)
        trace.append((s, a, p, alive.copy()))
        s, fell = cartpole_step(s, a == 1)
        alive &= ~fell
        if not alive.any():
            break
    reward = np.array([t[3] for t in trace], float)         # 1 for every step still up
    to_go = np.zeros_like(reward)
    g = np.zeros(episodes)
    for t in range(len(trace) - 1, -1, -1):
        g = reward[t] + gamma * g * reward[t]
        to_go[t] = g
    live = reward > 0
    adv = (to_go - to_go[live].mean()) / (to_go[live].std() + 1e-8) * reward
    grad = np.zeros_like(weights)
    for t, (states, actions, probs, _) in enumerate(trace):
        d = -probs
        d[np.arange(episodes), actions] += 1                # d log pi / d logits
        d *= adv[t][:, None]
        grad[:4] += states.T @ d
        grad[4] += d.sum(axis=0)
    return reward.sum(axis=0), grad / episodes


@nbray.remote
def rollout(weights, seed, episodes):
    return run_episodes(weights, seed, episodes)


@nbray.remote
class Learner:
    def __init__(self, lr: float = 0.05):
        self.weights = np.zeros((5, 2))
        self.lr, self.iteration, self.last_mean = lr, 0, 0.0

    def get_weights(self):
        return self.weights

    def update(self, *results):
        self.weights = self.weights + self.lr * np.mean([g for _, g in results], axis=0)
        self.iteration += 1
        self.last_mean = float(np.mean(np.concatenate([r for r, _ in results])))
        return self.last_mean

    def __nbray_state__(self):
        return {"iteration": self.iteration, "mean_return": round(self.last_mean, 1)}


def train(iterations: int, rollouts: int, episodes: int, bar=None) -> tuple:
    """(the learning curve: the mean return of every iteration, the final weights)."""
    learner = Learner.remote()
    curve = []
    for it in range(iterations):
        weights = nbray.put(nbray.get(learner.get_weights.remote()))    # once per iteration
        results = [rollout.remote(weights, it * rollouts + k, episodes)
                   for k in range(rollouts)]
        curve.append(nbray.get(learner.update.remote(*results), timeout=600))
        if bar is not None:
            bar.set_postfix(mean_return=f"{curve[-1]:.0f}")
            bar.update(1)
    return curve, nbray.get(learner.get_weights.remote())


def speedup(weights: np.ndarray, rollouts: int, episodes: int, rounds: int = 3) -> tuple:
    """(serial seconds, parallel seconds) of ``rounds`` iterations' rollouts with these
    weights and the same seeds, on warm workers."""
    seeds = [10_000 + k for k in range(rounds * rollouts)]
    t = time.perf_counter()
    for seed in seeds:
        run_episodes(weights, seed, episodes)
    serial = time.perf_counter() - t
    ref = nbray.put(weights)
    t = time.perf_counter()
    timed = rollout.options(name="rollout (speedup run)")  # apart from training's, in the log
    nbray.get([timed.remote(ref, seed, episodes) for seed in seeds], timeout=600)
    return serial, time.perf_counter() - t


def write_report(path: str, curve: list) -> None:
    """A standalone HTML page (BokehJS inline: no network needed to view it)."""
    from bokeh.io import save
    from bokeh.layouts import column
    from bokeh.models import Div
    from bokeh.plotting import figure
    from bokeh.resources import INLINE
    from nbray.dashboard import data, plots
    snap = data.Snapshot.take()
    learning = figure(title="learning curve", height=300, width=760, x_axis_label="iteration",
                      y_axis_label="mean return (max 200)")
    learning.line(list(range(len(curve))), curve, line_width=2)
    latency, graph = plots.LatencyPlot(), plots.TaskGraphPlot()
    latency.update(snap)
    graph.update(snap)
    # the latency plot without its function picker: a Python callback, which a static page
    # cannot run
    save(column(Div(text="<h2>nbray demo: policy gradient on cart-pole</h2>"), learning,
                latency.status, latency.bars, latency.histogram, graph.layout),
         filename=path, resources=INLINE, title="nbray demo")


def main(iterations: int = 40, rollouts: int = 8, episodes: int = 16,
         num_workers: int | None = None, out: str = "nbray-demo") -> int:
    for name, value in (("iterations", iterations), ("rollouts", rollouts),
                        ("episodes", episodes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    t0 = time.perf_counter()
    ctx = nbray.init(num_workers=num_workers)
    try:
        return _run(ctx, iterations, rollouts, episodes, out, time.perf_counter() - t0)
    finally:
        nbray.shutdown()


def _run(ctx, iterations: int, rollouts: int, episodes: int, out: str, started: float) -> int:
    print(f"nbray demo: embedded cluster {ctx.session} with {ctx.num_workers} workers "
          f"(started in {started:.2f}s)")
    t = time.perf_counter()
    with tqdm(total=iterations, desc="training", unit="iteration", file=sys.stderr,
              dynamic_ncols=True) as bar:
        curve, weights = train(iterations, rollouts, episodes, bar)
    wall = time.perf_counter() - t
    serial_s, parallel_s = speedup(weights, rollouts, episodes)
    os.makedirs(out, exist_ok=True)
    report, trace = os.path.join(out, "report.html"), os.path.join(out, "timeline.json")
    nbray.timeline(trace)
    write_report(report, curve)
    records = [r for r in nbray.state.tasks(pending=False) if r["name"] == "rollout"]
    lat = [r["returned"] - r["submitted"] for r in records if r.get("returned")]
    print()
    print("Summary")
    print(f"  training:        {iterations} iterations x {rollouts} rollout tasks x "
          f"{episodes} episodes in {wall:.2f}s ({iterations * rollouts / wall:,.0f} tasks/s)")
    print(f"  mean return:     {curve[0]:.1f} at the start, {curve[-1]:.1f} at the end "
          f"(best {max(curve):.1f}; an episode lasts at most {MAX_STEPS} steps)")
    print(f"  speedup:         3 iterations' rollouts with the trained policy: "
          f"{serial_s:.3f}s serially in this process, {parallel_s:.3f}s as tasks on "
          f"{ctx.num_workers} workers ({serial_s / parallel_s:.2f}x)")
    if lat:
        print(f"  rollout latency: p50 {np.percentile(lat, 50) * 1e3:.1f} ms, p99 "
              f"{np.percentile(lat, 99) * 1e3:.1f} ms from submit to result "
              f"({len(lat)} tasks)")
    print(f"  report:          {report}")
    print(f"  timeline:        {trace} (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
