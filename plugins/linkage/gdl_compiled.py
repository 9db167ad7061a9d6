"""The GDL table and its greedy merge loop compiled with numba (the ``gdl`` linkage's fast path).

The same arithmetic as ``gdl.GDLState`` and ``Agglomerative._merge_steps``, in the same order, so
the merges and the labels are bit for bit those of the Python code (``tests/test_gdl_compiled.py``
checks label hashes on real data): a B row is updated as B(big→y) + B(small→y) + X(y), X's
degree sums run over the gathered edges in the order ``np.bincount`` sums them, and the heap holds
(−score, cluster, version) tuples ordered as Python's ``heapq`` orders them.

Imported on first use, where numba is installed (``gdl.compiled_kernels``); without it the Python
code runs.
"""
from __future__ import annotations

import heapq
import math

import numpy as np
from numba import njit, types
from numba.typed import Dict, List

FloatRow = types.DictType(types.int64, types.float64)


@njit(cache=True)
def rows_from_csr(indptr, indices, data, n_rows):
    """A typed list of {column: value} dicts, one per row, explicit zeros dropped."""
    rows = List.empty_list(FloatRow)
    for r in range(n_rows):
        row = Dict.empty(types.int64, types.float64)
        for e in range(indptr[r], indptr[r + 1]):
            if data[e] != 0.0:
                row[indices[e]] = data[e]
        rows.append(row)
    return rows


@njit(cache=True)
def member_lists(labels, n_clusters):
    """Each cluster's samples as a linked list (head, tail, next), in increasing sample order."""
    head = np.full(n_clusters, -1, np.int64)
    tail = np.full(n_clusters, -1, np.int64)
    nxt = np.full(len(labels), -1, np.int64)
    for i in range(len(labels)):
        c = labels[i]
        if head[c] < 0:
            head[c] = i
        else:
            nxt[tail[c]] = i
        tail[c] = i
    return head, tail, nxt


@njit(cache=True)
def _cross_terms(big, small, labels, head, nxt, in_out_ptr, in_out_idx, in_out_w, n, deg, cross):
    """X(y) for every cluster y other than big and small (``GDLState._cross_terms``).

    ``deg`` (2N) and ``cross`` (C) are zeroed scratch arrays, left zeroed again; returns the clusters
    y with X(y) > 0, and leaves X(y) in ``cross[y]`` until the caller has read and cleared it."""
    # the in- then out-neighbours of small's members, keyed u (an in-neighbour) or n + v (an out-neighbour);
    # their degrees towards small summed in gather order, as np.bincount does
    n_keys = 0
    for part in range(2):
        m = head[small]
        while m >= 0:
            row = m + n * part
            n_keys += in_out_ptr[row + 1] - in_out_ptr[row]
            m = nxt[m]
    keys = np.empty(n_keys, np.int64)
    n_keys = 0
    for part in range(2):
        m = head[small]
        while m >= 0:
            row = m + n * part
            for e in range(in_out_ptr[row], in_out_ptr[row + 1]):
                key = in_out_idx[e] + n * part
                if deg[key] == 0.0:
                    keys[n_keys] = key
                    n_keys += 1
                deg[key] += in_out_w[e]
            m = nxt[m]
    keys = np.sort(keys[:n_keys])
    targets = np.empty(n_keys, np.int64)
    n_targets = 0
    for key in keys:
        deg_big = 0.0
        for e in range(in_out_ptr[key], in_out_ptr[key + 1]):
            if labels[in_out_idx[e]] == big:
                deg_big += in_out_w[e]
        value = deg[key] * deg_big
        deg[key] = 0.0
        target = labels[key - n if key >= n else key]
        if value > 0 and target != big and target != small:
            if cross[target] == 0.0:
                targets[n_targets] = target
                n_targets += 1
            cross[target] += value
    return targets[:n_targets]


@njit(cache=True)
def merge_pair(a, b, b_rows, aff, labels, head, tail, nxt, size, alive, in_out_ptr, in_out_idx, in_out_w, n,
               exact, middle, deg, cross):
    """Merge clusters a and b (``GDLState.merge``); returns the merged id and the changed clusters.
    ``deg`` and ``cross``: zeroed scratch arrays of 2N and C floats."""
    if size[a] > size[b] or (size[a] == size[b] and b >= a):
        big, small = a, b
    else:
        big, small = b, a
    if exact:
        crossed = _cross_terms(big, small, labels, head, nxt, in_out_ptr, in_out_idx, in_out_w, n, deg, cross)
    else:
        crossed = np.empty(0, np.int64)
    neighbours = Dict.empty(types.int64, types.boolean)
    for y in aff[big]:
        neighbours[y] = True
    for y in aff[small]:
        neighbours[y] = True
    for y in crossed:
        neighbours[y] = True
    neighbours.pop(big, False)
    neighbours.pop(small, False)
    # B(M→y) = B(big→y) + B(small→y) + X(y), accumulated into the larger row
    row = b_rows[big]
    row.pop(small, 0.0)
    small_row = b_rows[small]
    for y, v in small_row.items():
        if y != big:
            row[y] = row.get(y, 0.0) + v
    b_rows[small] = Dict.empty(types.int64, types.float64)
    for y in crossed:
        row[y] = row.get(y, 0.0) + cross[y]
        cross[y] = 0.0
    # B(x→M) = B(x→big) + B(x→small)
    for x in neighbours:
        bx = b_rows[x]
        v = bx.pop(small, 0.0) + bx.get(big, 0.0)
        if v > 0:
            bx[big] = v
    # the samples of small join big (its list appended to big's)
    m = head[small]
    while m >= 0:
        labels[m] = big
        m = nxt[m]
    nxt[tail[big]] = head[small]
    tail[big] = tail[small]
    head[small] = -1
    tail[small] = -1
    size[big] += size[small]
    size[small] = 0
    alive[small] = False
    for x in aff[small]:
        if x != big:
            aff[x].pop(small, 0.0)
    aff[small] = Dict.empty(types.int64, types.float64)
    aff[big] = Dict.empty(types.int64, types.float64)
    inv_m = 1.0 / (size[big] * size[big])
    for y in neighbours:
        inv_y = 1.0 / (size[y] * size[y])
        if middle:
            value = row.get(y, 0.0) * inv_y + b_rows[y].get(big, 0.0) * inv_m
        else:
            value = row.get(y, 0.0) * inv_m + b_rows[y].get(big, 0.0) * inv_y
        if value > 0:
            aff[big][y] = value
            aff[y][big] = value
        else:
            aff[big].pop(y, 0.0)
            aff[y].pop(big, 0.0)
    changed = np.empty(len(neighbours) + 1, np.int64)
    i = 0
    for y in neighbours:
        changed[i] = y
        i += 1
    changed[i] = big
    return big, changed


@njit(cache=True)
def merge_score(row, k_c, lam):
    """The paper's criterion for a cluster with affinities ``row`` (``agglomerative.merge_score``).

    The K_c largest values are kept in a K_c-long sorted buffer in one pass (no copy or sort of the
    whole row: a giant cluster's row has thousands of entries), then summed in the descending order
    Python's ``sum(sorted(...)[1:k_c])`` uses."""
    if len(row) == 0:
        return -math.inf
    if k_c == 1 or lam == 0:
        best = -math.inf
        for v in row.values():
            if v > best:
                best = v
        return best
    top = np.full(k_c, -math.inf)
    for v in row.values():
        if v > top[k_c - 1]:
            i = k_c - 1
            while i > 0 and top[i - 1] < v:
                top[i] = top[i - 1]
                i -= 1
            top[i] = v
    rest = 0.0
    for i in range(1, min(k_c, len(row))):
        rest += top[i]
    return (1.0 + lam) * top[0] - lam / (k_c - 1) * rest


@njit(cache=True)
def best_neighbour(row):
    """Highest affinity, smallest id on ties (``agglomerative.best_neighbour``)."""
    best, best_v = -1, -math.inf
    for k, v in row.items():
        if v > best_v or (v == best_v and k < best):
            best, best_v = k, v
    return best


@njit(cache=True)
def start_heap(aff, alive, k_c, lam):
    heap = List()
    heap.append((0.0, np.int64(0), np.int64(0)))
    heap.pop()
    for c in range(len(aff)):
        if alive[c]:
            s = merge_score(aff[c], k_c, lam)
            if s > -math.inf:
                heap.append((-s, np.int64(c), np.int64(0)))
    heapq.heapify(heap)
    return heap


@njit(cache=True)
def greedy_merges(steps, heap, version, n_clusters, k_c, kc_min_clusters, lam, b_rows, aff, labels, head, tail,
                  nxt, size, alive, in_out_ptr, in_out_idx, in_out_w, n, exact, middle, deg, cross):
    """Up to ``steps`` greedy merges (``Agglomerative._merge_steps``); returns (merges done, clusters left).

    ``version`` holds each live cluster's heap version (-1: gone); heap entries of an older
    version are stale and skipped."""
    done = 0
    while done < steps and len(heap) > 0:
        neg, c, ver = heapq.heappop(heap)
        if version[c] != ver:
            continue
        partner = best_neighbour(aff[c])
        merged, changed = merge_pair(c, partner, b_rows, aff, labels, head, tail, nxt, size, alive, in_out_ptr,
                                     in_out_idx, in_out_w, n, exact, middle, deg, cross)
        gone = partner if merged == c else c
        version[gone] = -1
        n_clusters -= 1
        done += 1
        kc_now = k_c if n_clusters > kc_min_clusters else 1
        for x in changed:
            version[x] += 1
            s = merge_score(aff[x], kc_now, lam)
            if s > -math.inf:
                heapq.heappush(heap, (-s, x, version[x]))
    return done, n_clusters
