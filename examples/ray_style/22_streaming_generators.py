"""Streaming generators. A remote function that ``yield``s streams its results by default:
``.remote()`` hands back a ``ray.ObjectRefGenerator`` at once, and every yielded value becomes
an object of its own that the caller can fetch while the task is still busy with the next
one. Here the producer stops after its first item until the driver, having read that item,
opens a gate, which could only happen if items really arrive mid-task. ``ray.wait`` takes a
generator (it is ready when its next item is); an exception part-way through shows up as the
ref after the last good item, whose values stay readable; ``async for`` walks a generator
inside asyncio code."""
import asyncio

import nbray as ray

ray.init(num_cpus=2)


@ray.remote
class Gate:
    def __init__(self):
        self.opened = asyncio.Event()

    def open(self):
        self.opened.set()

    async def passed(self):
        await self.opened.wait()
        return True


@ray.remote
def readings(gate, n):
    yield "calibrated"
    ray.get(gate.passed.remote())           # held here until the driver opens the gate
    for i in range(n):
        yield 20.0 + i / 2


gate = Gate.remote()
gen = readings.remote(gate, 4)
assert isinstance(gen, ray.ObjectRefGenerator)
assert ray.get(next(gen)) == "calibrated"
assert not gen.is_finished()                 # the task is still running
ready, not_ready = ray.wait([gen], timeout=0.3)
assert ready == [] and not_ready == [gen]    # no second item until the gate opens
gate.open.remote()
ready, _ = ray.wait([gen], timeout=20)
assert ready == [gen]
values = [ray.get(ref) for ref in gen]
print("streamed after the gate opened:", values)
assert values == [20.0, 20.5, 21.0, 21.5]
assert gen.is_finished() and ray.get(gen.completed()) == 5     # the number of items


@ray.remote
def inverses(n):
    for d in range(n, -1, -1):
        yield 60 // d                        # d == 0 comes last


refs = list(inverses.remote(3))
assert len(refs) == 4                        # three values, then the error in a ref
assert ray.get(refs[:3]) == [20, 30, 60]
try:
    ray.get(refs[3])
except ZeroDivisionError as e:
    print("mid-stream error:", str(e).splitlines()[0])
else:
    raise AssertionError("expected ZeroDivisionError from the fourth item")


@ray.remote
def letters(word):
    for ch in word:
        yield ch.upper()


async def spell(word):
    out = []
    async for ref in letters.remote(word):
        out.append(await ref)
    return "".join(out)


assert asyncio.run(spell("stream")) == "STREAM"
ray.shutdown()
