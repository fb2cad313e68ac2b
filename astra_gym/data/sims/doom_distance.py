"""Walking distance to a map object in a ViZDoom scenario (for dense progress rewards).

The map's blocking lines (walls) are drawn into a grid of ``cell``-unit squares, widened by the
player's radius, and a breadth-first search from the object's cell gives every reachable cell its
walking distance (8-connected moves, diagonals cost sqrt(2); a diagonal may not cut a wall corner).
Positions are ViZDoom map units (``POSITION_X``/``POSITION_Y``, the ``camera_pos`` pose).

    field = distance_field("my_way_home", "GreenArmor")     # the vest
    field(np.array([572.0, 55.0]))                           # map units to walk from there
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass

import numpy as np

__all__ = ["DistanceField", "distance_field"]

_PLAYER_RADIUS = 16.0  # map units (Doom's player)


@dataclass(frozen=True, eq=False)
class DistanceField:
    """Walking distances on a grid.

    Attributes:
        origin: (x, y) map units of cell (0, 0)'s corner.
        cell: Cell side in map units.
        distance: float64 [W, H] walking distance of each cell's centre; inf = unreachable or wall.
        target: (x, y) of the object the distances lead to.
    """

    origin: tuple[float, float]
    cell: float
    distance: np.ndarray
    target: tuple[float, float]

    def __call__(self, xy: np.ndarray) -> float:
        """Walking distance from ``xy`` [2] (map units); the nearest reachable cell's for walls/outside."""
        index = np.floor((np.asarray(xy, np.float64)[:2] - self.origin) / self.cell).astype(int)
        index = np.clip(index, 0, np.array(self.distance.shape) - 1)
        value = self.distance[index[0], index[1]]
        if np.isfinite(value):
            return float(value)
        return float(self._nearest_reachable(index))

    def _nearest_reachable(self, index: np.ndarray) -> float:
        cells = np.argwhere(np.isfinite(self.distance))
        nearest = cells[np.argmin(((cells - index) ** 2).sum(axis=1))]
        return self.distance[nearest[0], nearest[1]]


def _wall_grid(lines: np.ndarray, origin: np.ndarray, shape: tuple[int, int], cell: float) -> np.ndarray:
    """bool [W, H]: cells within the player's radius of a blocking line segment."""
    centres = (
        origin + (np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1) + 0.5) * cell
    )
    points = centres.reshape(-1, 2)  # [W*H, 2]
    walls = np.zeros(len(points), bool)
    reach = _PLAYER_RADIUS + cell * 0.5
    for x1, y1, x2, y2 in lines:
        a, b = np.array([x1, y1]), np.array([x2, y2])
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        walls |= np.linalg.norm(points - (a + t[:, None] * ab), axis=1) < reach
    return walls.reshape(shape)


def _walk(walls: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Dijkstra over free cells from ``start`` (8-connected, no corner cutting): float64 [W, H]."""
    distance = np.full(walls.shape, np.inf)
    distance[start] = 0.0
    queue = [(0.0, start)]
    steps = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy]
    while queue:
        d, (x, y) = heapq.heappop(queue)
        if d > distance[x, y]:
            continue
        for dx, dy in steps:
            nx, ny = x + dx, y + dy
            if not (0 <= nx < walls.shape[0] and 0 <= ny < walls.shape[1]) or walls[nx, ny]:
                continue
            if dx and dy and (walls[x + dx, y] or walls[x, y + dy]):
                continue
            nd = d + (1.4142135623730951 if dx and dy else 1.0)
            if nd < distance[nx, ny]:
                distance[nx, ny] = nd
                heapq.heappush(queue, (nd, (nx, ny)))
    return distance


@functools.cache
def distance_field(scenario: str, target: str, cell: float = 16.0) -> DistanceField:
    """The walking-distance field to the object named ``target`` in ``scenario``'s map (cached per process).

    Raises:
        ValueError: The map has no object named ``target`` (the message lists those it has).
    """
    from astra_gym.data.sims.doom_env import DEFAULT_BUTTONS, make_game

    game = make_game(scenario, DEFAULT_BUTTONS, "RES_160X120", False, None, map_info=True)
    try:
        game.set_seed(0)
        game.new_episode()
        state = game.get_state()
        lines = np.array([(ln.x1, ln.y1, ln.x2, ln.y2) for s in state.sectors for ln in s.lines if ln.is_blocking])
        objects = {o.name: (o.position_x, o.position_y) for o in state.objects}
    finally:
        game.close()
    if target not in objects:
        raise ValueError(f"the {scenario} map has no object {target!r}; it has {sorted(objects)}")
    low = lines.reshape(-1, 2).min(axis=0) - cell
    high = lines.reshape(-1, 2).max(axis=0) + cell
    shape = tuple(int(v) for v in np.ceil((high - low) / cell))
    walls = _wall_grid(lines, low, shape, cell)
    goal = tuple(int(v) for v in np.floor((np.asarray(objects[target]) - low) / cell))
    walls[goal] = False
    distance = _walk(walls, goal) * cell
    return DistanceField((float(low[0]), float(low[1])), cell, distance, objects[target])
