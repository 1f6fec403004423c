#pragma once
/// \file
/// The driver of the dense divergences (internal): `dense_rows_fast` over all rows, in row
/// blocks or with long rows split between the threads (`balance_ranges`).
///
/// **Speed.** A softmax gradient needs two sweeps over a row (the normaliser comes last), so
/// each thread runs blocks of consecutive rows through a software pipeline and every sweep
/// serves several rows at once, in L1-sized chunks of 2048 entries:
///   * stage 1 of row n: both exponentials per entry (a short base-2 exponential on AVX-512,
///     see core/simd/fast_math.hpp), stored to a pair of per-thread work rows, with their
///     sums and the KL value terms, and the maxima of the next chunk read one chunk ahead
///     (chunk maxima merged as in an online softmax);
///   * stage 2 of row n − 1 (JSD, skew KL, skew reverse KL, TVD): the value terms (one
///     table-driven log per entry for JSD and skew KL) and the per-entry gradient factor
///     (JSD: r = log q − log M; TVD: sign(q − p)), stored over the teacher exponentials; JSD
///     and TVD sum the unnormalised exponentials times their terms and scale by the chunk's
///     normalising factor once per chunk. JSD reads no teacher logits here: KL(p‖M) =
///     KL(p‖q) + Σ p r, with KL(p‖q) summed in stage 1. For long rows its lean variant reads
///     no logits at all (`kLeanCapable`): r = −log((1−β) + c_k e_p/e_q) from the two
///     exponentials alone (c_k the chunk's ratio of normalising factors), one log and a
///     division per entry; chunks where e_q may be subnormal or the ratio overflow take the
///     log-difference form instead;
///   * stage 3 of the oldest row: the gradient, written once (streaming stores for overwritten
///     float gradients), from the work rows, which stage 1 then refills in place.
/// The three stages run in one fused sweep per chunk, so that the reads of one row, the
/// arithmetic of the next and the gradient writes of a third overlap (docs/distill.md has the
/// measurements behind this design). Rows holding a non-finite logit or one beyond
/// |logit/τ| = 2^20 (the chunk maxima and minima of stage 1 tell), or whose sums or value come
/// out non-finite, leave the pipeline for an exact slower path. Long rows (V = 151936)
/// are shared by the threads instead: each sweeps its own range of chunks of every row (the
/// ranges follow the threads' sweep times), and thread 0 merges the per-chunk sums between
/// barriers (`dense_rows_fast`), so that a thread's share stays in its L2 and a single row
/// uses every thread.
///
/// **Busy hosts.** Row blocks are handed out in order to whichever thread is free, with no
/// barrier: a thread the host deschedules delays only the block it holds, and losing a core
/// costs about its share. The row split's per-step barriers cannot tolerate that (a
/// descheduled thread holds every other one at each barrier: 60× slower calls were measured
/// beside busy processes), so it starts only when the whole team checks in within 0.5 ms
/// (`FastPathTuning::split_checkin_seconds`), watches its own waiting and, when its threads
/// wait more than they work (`FastPathTuning::split_idle_fraction`), lets no further row in
/// and finishes the call in row blocks; the calls of the next 0.1 s then start in row blocks
/// (`FastPathTuning::split_backoff_seconds`: a host that is busy now is likely busy for the
/// next call too, and each attempt costs about one scheduler slice). Per-thread (or, for
/// shared rows, per-call) scratch of at most two pairs of V-rows; no `[N, V]` temporary beyond the gradient
/// the caller asked for (pass a `GradientOut` over a row block to stream rows in chunks: rows
/// are independent).
/// Arithmetic in float (double for double logits), float sums within chunks and double
/// across chunks; bfloat16 logits are widened to float row by row and the gradient is rounded
/// back to bfloat16. Per-row values are combined in row order and every chunk's arithmetic is
/// the same whoever computes it, so results are identical for any thread count.

#include <rlpo/core/detail/parallel.hpp>
#include <rlpo/core/kernel_instances.hpp>
#include <rlpo/core/result.hpp>
#include <rlpo/core/simd/packet.hpp>
#include <rlpo/distill/detail/rows.hpp>
#include <rlpo/divergence/detail/exact_row.hpp>
#include <rlpo/divergence/detail/fused_chunk.hpp>
#include <rlpo/divergence/detail/kind_registry.hpp>
#include <rlpo/divergence/detail/merge.hpp>
#include <rlpo/divergence/detail/slot.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

namespace rlpo::distill::detail {

/// The per-row results of the dense pipeline (`dense_rows`), combined by the caller.
struct DenseRows {
    std::vector<double> loss;  ///< L_n (0 for masked rows)
    std::vector<double> aux;   ///< zeros (the `combine_rows` interface)
    std::vector<RowError> errs;
};

/// When a row split last gave way on a busy host (steady-clock nanoseconds; process-wide).
inline std::atomic<std::int64_t>& last_split_fallback() noexcept {
    static std::atomic<std::int64_t> t{std::numeric_limits<std::int64_t>::min() / 2};
    return t;
}
inline std::int64_t steady_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
inline void note_split_fallback() noexcept {
    last_split_fallback().store(steady_ns(), std::memory_order_relaxed);
}
/// Whether a split gave way within the last `seconds`.
inline bool split_backed_off(double seconds) noexcept {
    if (!(seconds > 0)) return false;
    const std::int64_t since = steady_ns() - last_split_fallback().load(std::memory_order_relaxed);
    return static_cast<double>(since) < seconds * 1e9;
}

/// The row split's load balance: moves the boundary kb[t + 1] between threads t and t + 1
/// one chunk toward the faster of the two when their last sweep times differ by more than
/// one chunk of the slower one (a thread keeps at least one chunk). The host may slow one
/// core for a while; which thread sweeps a chunk never changes its arithmetic, so results
/// stay the same bit for bit. (`shuffle`, `FastPathTuning::shuffle_ranges`, for tests: the
/// boundaries move by a fixed pattern of the step instead.)
inline void balance_ranges(Index* kb, const double* time, Index nt, Index nc, Index step,
                           bool shuffle = false) {
    if (shuffle) {
        for (Index t = 1; t < nt; ++t)
            kb[t] = std::min(std::max(nc * t / nt + (step + t) % 3 - 1, kb[t - 1]), nc);
        return;
    }
    for (Index t = 0; t + 1 < nt; ++t) {
        const double ta = time[t], tb = time[t + 1];
        const Index na = kb[t + 1] - kb[t], nb = kb[t + 2] - kb[t + 1];
        if (ta > tb && na > 1 && (ta - tb) * static_cast<double>(na) > ta)
            --kb[t + 1];
        else if (tb > ta && nb > 1 && (tb - ta) * static_cast<double>(nb) > tb)
            ++kb[t + 1];
    }
}

/// The fast path over all rows, in one of two ways of sharing them between threads:
///  * row blocks: blocks of `FastPathTuning::row_block_rows` consecutive rows (by default
///    about an eighth of a thread's share), each taken by whichever thread is free and run
///    through a software pipeline of two (forward / reverse KL) or three stages, one fused
///    sweep per chunk over all rows in flight (see `fused_chunk`), so that the reads of one
///    row, the compute of the next and the gradient writes of the previous overlap;
///  * row split (long rows): every thread runs the same pipeline over all rows but sweeps
///    only its own contiguous range of chunks [K_t, K_t+1) of each; after each step thread 0
///    merges the per-chunk maxima and sums (`finish_stage1/2`), moves the ranges toward equal
///    sweep times (`balance_ranges`) and plans the next step, between two barriers. A
///    thread's share of the logit and work rows in flight then fits in its core's L2 (at
///    V = 151936 a whole row's do not: about 2.4 MB at depth 2, 3.6–4.3 MB at depth 3), and
///    a single long row uses every thread.
/// The split is taken when the row-block working set (the logit rows and work rows in flight,
/// `arrays`·V floats) exceeds `FastPathTuning::split_bytes`, for float and double logits
/// (bfloat16 rows are widened whole into per-row copies). Every chunk's arithmetic is the
/// same in both modes — maxima, sums and gradient entries are per chunk, merged in chunk
/// order in double — so the results do not depend on the mode or the number of threads, bit
/// for bit. Rows that need the exact path leave the pipeline and are done at once (by thread
/// 0 in the row split); masked rows never enter it. A row split whose threads wait at its
/// barriers more than they sweep (a busy host) lets no further row in and gives the rest to
/// row blocks (the file comment, "Busy hosts").
template <Divergence D, class S, class A>
inline void dense_rows_fast(const DistillOptions& o, const RowPlan& plan, const ConstMatRef<S>& zm,
                            const ConstMatRef<S>& ym, const ::rlpo::detail::GradWriter<S>& g,
                            double row_scale, DenseRows& out) {
    const Index N = zm.rows(), V = zm.cols();
    out.loss.assign(static_cast<std::size_t>(N), 0.0);
    out.aux.assign(static_cast<std::size_t>(N), 0.0);
    out.errs.assign(static_cast<std::size_t>(N), RowError{});
    std::vector<double>& loss = out.loss;
    std::vector<RowError>& errs = out.errs;
    const bool add = g.mode() == GradMode::Add;
    DenseCtx<A> c;
    c.invT = static_cast<A>(1.0 / o.temperature);
    c.beta = static_cast<A>(o.beta);
    c.omb = static_cast<A>(1.0 - o.beta);
    c.al = static_cast<A>(o.alpha);
    c.oma = static_cast<A>(1.0 - o.alpha);
    c.V = V;
    c.nc = (V + kRowChunk - 1) / kRowChunk;
    // Pipeline depth: 2 (stage 1 of row n with stage 3 of row n − 1) or 3 (the value sweep of
    // row n − 1 fused in as well, two pairs of work buffers). TVD's value sweep is cheap: when
    // two pairs would not fit in a core's L2 (measured: V = 151936 floats, 2.4 MB) it runs on
    // its own right after stage 1 (`inline2`) with one pair. The log-heavy sweeps (JSD, skew)
    // gain more from overlapping memory than they lose to the larger footprint: always fused.
    constexpr std::size_t kWorkBudget = std::size_t(1) << 20;  // bytes of work rows at depth 3
    const bool inline2 =
        KindMath<D>::kValueSweepAlone && 4 * static_cast<std::size_t>(V) * sizeof(A) > kWorkBudget;
    const int depth = kThreeStage<D> && !inline2 ? 3 : 2;
    const int npairs = depth == 3 ? 2 : 1;
    // the rows in flight in one thread: the logit rows of stage 1 (2), the work rows (2 per
    // pair) and the logit rows that stage 2 reads (`KindMath::kStage2LogitRows`: JSD and skew
    // reverse KL the student's, skew KL the teacher's, TVD none; χ² reads both, but only for
    // their −inf, and counts one)
    const std::size_t arrays =
        depth == 3 ? 6 + static_cast<std::size_t>(KindMath<D>::kStage2LogitRows) : 4;
    const bool split_ok = std::is_same<S, A>::value &&
                          arrays * static_cast<std::size_t>(V) * sizeof(A) > o.tuning.split_bytes;
    // JSD's lean value sweep for long rows (4 rows in flight instead of 7); by the row length
    // only, so that the results do not depend on the mode or the number of threads
    c.lean = kLeanCapable<D, A> &&
             arrays * static_cast<std::size_t>(V) * sizeof(A) > o.tuning.lean_bytes;
    c.lean_log_form = o.tuning.lean_log_form;
    // the row split's shared state: slots, work buffers, and the rows of the current step
    Slot<S, A> shared_slots[3];
    Arr<A> shared_pool[2][2];
    Slot<S, A>* step[3] = {nullptr, nullptr, nullptr};  // rows in stages 1, 2, 3
    S* step_zero = nullptr;                             // a masked row's gradient to zero
    bool step_inline = false;
    // and its chunk ranges: thread t sweeps chunks [kb[t], kb[t + 1]) of every row, and
    // thread 0 moves the boundaries between steps after the threads' sweep times
    // (`balance_ranges`)
    std::vector<Index> kb;
    std::vector<double> sweep_time, inline_time;
    if (split_ok) {
        kb.resize(static_cast<std::size_t>(::rlpo::detail::max_threads()) + 1);
        sweep_time.resize(kb.size());
        inline_time.resize(kb.size());
    }
    // where the row split stops (rows [cut, N) go to row blocks) and the step it ends at
    Index cut = N, split_end = 0;
    // the row blocks, taken in order by whichever thread is free: no barrier, so a thread
    // the host deschedules delays its own block only
    std::atomic<Index> next_block{0};
    // the team's check-in before a row split (0: undecided, 1: split, 2: row blocks)
    std::atomic<Index> arrived{0};
    std::atomic<int> split_mode{0};
    const bool parallel = N * V > 32768 && (N > 1 || split_ok);
    // a split that gave way in the last `split_backoff_seconds` (any call of the process):
    // row blocks from the start (decided once, before the team starts)
    // (not when the caller waits for the whole team as long as it takes: tests of the split)
    const bool backoff = split_ok && o.tuning.split_checkin_seconds >= 0 &&
                         split_backed_off(o.tuning.split_backoff_seconds);
    ::rlpo::detail::parallel_region(parallel, [&](const ::rlpo::detail::Team& team) {
        const Index nt = team.size(), id = team.id();
        bool split = split_ok && nt > 1 && !backoff;
        if (split) {
            // The row split needs the whole team from its first step; on a busy host a thread
            // may not run for a whole scheduler slice (several ms: the first barrier alone
            // cost 8 ms beside two busy processes). Thread 0 waits a moment for the others to
            // check in (`FastPathTuning::split_checkin_seconds`), and without them the call
            // runs in row blocks, which need no one.
            arrived.fetch_add(1, std::memory_order_acq_rel);
            if (id == 0) {
                const auto t0 = std::chrono::steady_clock::now();
                const double wait = o.tuning.split_checkin_seconds;
                while (
                    arrived.load(std::memory_order_acquire) < nt &&
                    (wait < 0 ||
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() <
                         wait))
                    std::this_thread::yield();
                const bool all = arrived.load(std::memory_order_acquire) == nt;
                if (!all) {
                    note_split_fallback();
                    if (o.stats) o.stats->split_fallbacks.fetch_add(1, std::memory_order_relaxed);
                }
                split_mode.store(all ? 1 : 2, std::memory_order_release);
            } else {
                while (split_mode.load(std::memory_order_acquire) == 0) std::this_thread::yield();
            }
            split = split_mode.load(std::memory_order_acquire) == 1;
        }
        const Index bs = o.tuning.row_block_rows > 0 ? o.tuning.row_block_rows
                         : nt == 1                   ? std::max<Index>(N, 1)
                                   : std::max(std::min<Index>(8, (N + nt - 1) / nt),
                                              (N + 8 * nt - 1) / (8 * nt));
        Index r0 = 0, r1 = N;  // the rows of the current pipeline run (a block, or all split)
        if (split && id == 0)
            for (Index t = 0; t <= nt; ++t) kb[static_cast<std::size_t>(t)] = c.nc * t / nt;
        // (the barriers of the row split; nothing in the row-block mode)
        const auto sync = [&] {
            if (split) team.barrier();
        };
        Scratch<A> ws;
        Slot<S, A> own_slots[3];
        Arr<A> own_pool[2][2];
        Slot<S, A>* slots = split ? shared_slots : own_slots;
        Arr<A>(*pool)[2] = split ? shared_pool : own_pool;
        // work buffers: one pair at depth 2, two at depth 3 (row n uses pair n mod 2, which
        // stage 3 of row n − 2 frees chunk by chunk in the same sweep)
        const auto allocate = [&] {
            for (int i = 0; i < npairs; ++i) {
                pool[i][0].resize(V);
                pool[i][1].resize(V);
            }
        };
        if (!split || id == 0) allocate();
        auto exact = [&](Slot<S, A>& s) {
            if (o.stats) o.stats->exact_rows.fetch_add(1, std::memory_order_relaxed);
            const auto k = static_cast<std::size_t>(s.n);
            RowError err;
            const double L = dense_row_exact<S, A>(o, s.z, s.y, V, ws, s.rg, err);
            if (!err.set() && !std::isfinite(L)) err = infinite_divergence_error();
            check_written_row(s.rg, err);
            errs[k] = err;
            loss[k] = L;
            s.n = -1;
        };
        // row `it` into a free slot (null for a masked row, whose gradient row is returned in
        // `zero` to be zeroed)
        auto enter = [&](Index it, Slot<S, A>& a, S*& zero) -> Slot<S, A>* {
            const auto k = static_cast<std::size_t>(it);
            S* dst = g.row(it);
            if (plan.m[k] == 0) {
                if (dst && !add) zero = dst;
                return nullptr;
            }
            a.size(c.nc);
            a.n = it;
            a.w0 = pool[it % npairs][0].data();
            a.w1 = pool[it % npairs][1].data();
            a.z = widen<A, S>(zm, it, a.zb);
            a.y = widen<A, S>(ym, it, a.yb);
            const bool next = std::is_same<S, A>::value && it + 1 < r1 &&
                              plan.m[static_cast<std::size_t>(it + 1)] != 0;
            a.nz = next ? reinterpret_cast<const A*>(zm.row(it + 1).data()) : nullptr;
            a.ny = next ? reinterpret_cast<const A*>(ym.row(it + 1).data()) : nullptr;
            a.rg = make_row_grad<S, A>(g, plan, it, V, row_scale, ws);
            return &a;
        };
        // the rows of step `it`: row `it` enters stage 1 (a), the two before it are in
        // stage 2 (b, depth 3) and stage 3 (gs)
        auto plan_step = [&](Index it, Slot<S, A>*& a, Slot<S, A>*& b, Slot<S, A>*& gs, S*& zero) {
            zero = nullptr;
            a = it < r1 ? enter(it, slots[it % depth], zero) : nullptr;
            b = nullptr;
            if (depth == 3 && it - 1 >= r0) {
                Slot<S, A>& s = slots[(it - 1) % depth];
                if (s.n == it - 1) b = &s;
            }
            gs = nullptr;
            if (it - (depth - 1) >= r0) {
                Slot<S, A>& s = slots[(it - (depth - 1)) % depth];
                if (s.n == it - (depth - 1) && s.rg.active()) gs = &s;
            }
        };
        // chunks [k0, k1) of the step, entries [e0, e1): a masked row's zeroed gradient, the
        // maxima and minima of the first chunk of row a, and the fused sweep
        auto sweep = [&](Index k0, Index k1, Slot<S, A>* a, Slot<S, A>* b, Slot<S, A>* gs,
                         S* zero) {
            const Index e0 = std::min(V, k0 * kRowChunk), e1 = std::min(V, k1 * kRowChunk);
            if (zero) Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>(zero + e0, e1 - e0).setZero();
            if (a && k0 < k1) {
                const auto kk = static_cast<std::size_t>(k0);
                chunk_range(a->z + e0, a->y + e0, std::min(kRowChunk, V - e0), a->mz[kk], a->my[kk],
                            a->lz[kk], a->ly[kk]);
            }
            fused_step<D, S, A>(c, k0, k1, a, b, gs);
        };
        auto finish2 = [&](Slot<S, A>& s) {
            if constexpr (kThreeStage<D>) {
                if (finish_stage2<D, S, A>(c, s))
                    loss[static_cast<std::size_t>(s.n)] = s.L;
                else
                    exact(s);
            } else {
                static_cast<void>(s);  // (two stages: no value sweep)
            }
        };
        // after the step's sweep: the results of the rows that leave; true when the value
        // sweep of row a is due on its own (`inline2`)
        auto finish_step = [&](Slot<S, A>* a, Slot<S, A>* b, Slot<S, A>* gs) -> bool {
            if (gs) gs->n = -1;
            if (b) finish2(*b);
            if (a) {
                if (!finish_stage1<D, S, A>(c, *a))
                    exact(*a);
                else if (!kThreeStage<D>)
                    loss[static_cast<std::size_t>(a->n)] = a->L;
                else if (inline2)
                    return true;
            }
            return false;
        };
        // The row split's watch on its barriers (thread 0): the time of each step against the
        // least time a thread spent sweeping in it; the rest was spent waiting.
        using Clock = std::chrono::steady_clock;
        auto last = Clock::now();
        double waited = 0.0, elapsed = 0.0;
        const auto watch = [&](Index it) {
            const auto now = Clock::now();
            const double wall = std::chrono::duration<double>(now - last).count();
            last = now;
            double least = wall;
            for (Index t = 0; t < nt; ++t) {
                const auto u = static_cast<std::size_t>(t);
                // (the value sweep's time only in a step that ran it: without it, the
                // threads wrote no time after the last barrier)
                least = std::min(least,
                                 sweep_time[u] + (inline2 && step_inline ? inline_time[u] : 0.0));
            }
            waited += wall - least;
            elapsed += wall;
            const bool stalled = waited > 1e-3 && waited > o.tuning.split_idle_fraction * elapsed;
            if ((stalled || it == o.tuning.split_fallback_step) && it + 1 < N) {
                cut = it + 1;  // rows from here on are not entered: the split drains and ends
                r1 = cut;
                split_end = cut + depth - 1;
                if (stalled) note_split_fallback();
                if (o.stats) o.stats->split_fallbacks.fetch_add(1, std::memory_order_relaxed);
            }
        };
        // One loop for both modes (one copy of the arithmetic: the results must not depend on
        // how a compiler contracts multiply-adds in two copies), run once over all rows in the
        // row split and once per block of rows otherwise. In the row split thread 0 merges
        // each step's results, moves the chunk ranges and plans the next step while the others
        // wait at the barrier: two barriers a step (four with `inline2`). When the threads
        // wait there more than they work (`watch`), no row enters after the current step,
        // thread 0 finishes the rows in flight alone and the rest of the rows go to row blocks.
        Slot<S, A>* own_step[3] = {nullptr, nullptr, nullptr};
        S* own_zero = nullptr;
        bool own_inline = false;
        Index from = 0;  // the first row of the row blocks
        for (;;) {
            if (split) {
                r0 = 0;
                r1 = N;
            } else {
                r0 = from + next_block.fetch_add(1, std::memory_order_relaxed) * bs;
                if (r0 >= N) break;
                r1 = std::min(N, r0 + bs);
            }
            Slot<S, A>** const st = split ? step : own_step;
            S*& zero = split ? step_zero : own_zero;
            bool& inl = split ? step_inline : own_inline;
            const bool lead = !split || id == 0, was_split = split;
            if (lead) {
                if (split) split_end = r1 + depth - 1;
                plan_step(r0, st[0], st[1], st[2], zero);
            }
            for (Index it = r0;; ++it) {
                sync();  // the step's rows, chunk ranges and the split's end are set
                if (split && cut < N) {
                    // the row split gave way: the others start on the row blocks, and thread
                    // 0 takes the rows still in flight through their last steps alone, whole
                    // rows at a time (no more barriers)
                    if (!lead) break;
                    split = false;
                }
                if (it >= (split ? split_end : r1 + depth - 1)) break;
                const auto t = static_cast<std::size_t>(id);
                const Index k0 = split ? kb[t] : 0, k1 = split ? kb[t + 1] : c.nc;
                Slot<S, A>* const a = st[0];
                auto start = Clock::now();
                sweep(k0, k1, a, st[1], st[2], zero);
                if (split)
                    sweep_time[t] = std::chrono::duration<double>(Clock::now() - start).count();
                sync();  // every chunk swept
                if (lead) inl = finish_step(a, st[1], st[2]);
                if (inline2) {
                    sync();  // `inl` is set
                    if (inl) {
                        start = Clock::now();
                        fused_step<D, S, A>(c, k0, k1, nullptr, a, nullptr);
                        if (split)
                            inline_time[t] =
                                std::chrono::duration<double>(Clock::now() - start).count();
                        sync();
                        if (lead) finish2(*a);
                    }
                }
                if (lead) {
                    if (split) {
                        balance_ranges(kb.data(), sweep_time.data(), nt, c.nc, it,
                                       o.tuning.shuffle_ranges);
                        if (cut == N) watch(it);
                    }
                    const Index end = split ? split_end : r1 + depth - 1;
                    if (it + 1 < end) plan_step(it + 1, st[0], st[1], st[2], zero);
                }
            }
            if (!was_split) continue;
            // the row split is over: rows [cut, N) (if any) in row blocks, in this thread's
            // own slots and work buffers
            from = cut;
            split = false;
            slots = own_slots;
            pool = own_pool;
            if (from < N) allocate();
        }
        simd::store_fence();  // order the streaming stores before the results are used
    });
}

/// Every row of a dense divergence (`o.divergence`, run as `kind_to_run(o)`: JSD at β = 0 / 1 as forward / reverse
/// KL) through `dense_rows_fast`: the per-row values L_n (without `row_scale`) and errors, for
/// the caller to combine (`combine_rows`, or a front end's own error messages). The gradient
/// of row n is written through `g`, scaled by coef · c · m_n · `row_scale`; the logits are the
/// student's `z` (the gradient's input) and the teacher's `y`. Arithmetic in A (float or
/// double; bfloat16 and float logits may be widened to a wider A).
/// (Not inline: one of the kernels that can be compiled once, core/kernel_instances.hpp.)
template <class S, class A>
DenseRows dense_rows(const DistillOptions& o, const RowPlan& plan, const ConstMatRef<S>& z,
                     const ConstMatRef<S>& y, const ::rlpo::detail::GradWriter<S>& g,
                     double row_scale) {
    const Divergence d = kind_to_run(o);
    DenseRows out;
    switch (d) {  // one case per row of the registry (divergence/detail/kind_registry.hpp)
#define RLPO_DIVERGENCE_CASE(K)                                                 \
    case Divergence::K:                                                         \
        dense_rows_fast<Divergence::K, S, A>(o, plan, z, y, g, row_scale, out); \
        break;
        RLPO_DIVERGENCE_KINDS(RLPO_DIVERGENCE_CASE)
#undef RLPO_DIVERGENCE_CASE
    }
    return out;
}

// the scalar types of `distill::divergence` (float, double, bfloat16 in float) and of
// `penalties::vocab_divergence` (float and double logits in double)
#define RLPO_DENSE_ROWS_INSTANCE(S, A)                                                            \
    RLPO_KERNEL_INSTANCE(DenseRows dense_rows<S, A>(const DistillOptions&, const RowPlan&,        \
                                                    const ConstMatRef<S>&, const ConstMatRef<S>&, \
                                                    const ::rlpo::detail::GradWriter<S>&, double))
RLPO_DENSE_ROWS_INSTANCE(float, float)
RLPO_DENSE_ROWS_INSTANCE(double, double)
RLPO_DENSE_ROWS_INSTANCE(float, double)
RLPO_DENSE_ROWS_INSTANCE(Eigen::bfloat16, float)
#undef RLPO_DENSE_ROWS_INSTANCE

}  // namespace rlpo::distill::detail
