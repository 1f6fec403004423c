// The cost of rlpo's data-parallel reductions in one training step, under mpirun:
//
//   mpirun -np 4 build/benchmarks/mpi_reductions [prompts group T reps]   (4096 16 1024 3)
//
// The mini-batch (prompts × group responses of T tokens, float) is sharded over the ranks in
// blocks of whole groups; each rank holds its block only. Per step and per batch-level
// function the program reports the number of collective calls, the doubles each rank
// contributes, the time spent inside the reductions (rank 0, after a barrier before each
// function; this includes waiting inside a collective for ranks whose computation before it is
// slower), the same collectives replayed alone after a barrier (the communication itself:
// same operations, same sizes, no computation in between) and the time of the whole function,
// all on rank 0. The numbers are medians over `reps` steps. For comparison it prints what
// shipping the rank's log-probs (4 bytes per token) would send.
#include <rlpo/dist/dist.hpp>
#include <rlpo/dist/mpi.hpp>
#include <rlpo/rlpo.hpp>
#include <rlpo/testing/random.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Counts and times the operations of another Reductions (a decorator: any engine plugs in).
class CountingReductions final : public rlpo::dist::Reductions {
public:
    explicit CountingReductions(const rlpo::dist::Reductions& inner) : inner_(inner) {}
    int rank() const override { return inner_.rank(); }
    int size() const override { return inner_.size(); }
    void sum(double* x, std::size_t n) const override {
        const auto t0 = Clock::now();
        inner_.sum(x, n);
        note(n, t0, 0);
    }
    void max(double* x, std::size_t n) const override {
        const auto t0 = Clock::now();
        inner_.max(x, n);
        note(n, t0, 1);
    }
    void min(double* x, std::size_t n) const override {
        const auto t0 = Clock::now();
        inner_.min(x, n);
        note(n, t0, 2);
    }
    std::vector<std::vector<double>> gather(const std::vector<double>& local) const override {
        const auto t0 = Clock::now();
        auto out = inner_.gather(local);
        note(local.size(), t0, 3);
        return out;
    }
    using Reductions::max;
    using Reductions::min;
    using Reductions::sum;

    void reset() const { calls_ = 0, doubles_ = 0, seconds_ = 0, log_.clear(); }
    /// The logged collectives again (same operations and sizes, zeros as data), timed after a
    /// barrier: what they cost without the computation between them.
    double replay() const {
        MPI_Barrier(MPI_COMM_WORLD);
        const auto t0 = Clock::now();
        for (const auto& [op, n] : log_) {
            std::vector<double> x(n, 0.0);
            if (op == 0) inner_.sum(x.data(), n);
            if (op == 1) inner_.max(x.data(), n);
            if (op == 2) inner_.min(x.data(), n);
            if (op == 3) (void)inner_.gather(x);
        }
        return std::chrono::duration<double>(Clock::now() - t0).count();
    }
    mutable long calls_ = 0;
    mutable double doubles_ = 0, seconds_ = 0;

private:
    void note(std::size_t n, Clock::time_point t0, int op) const {
        seconds_ += std::chrono::duration<double>(Clock::now() - t0).count();
        ++calls_;
        doubles_ += static_cast<double>(n);
        log_.emplace_back(op, n);
    }
    mutable std::vector<std::pair<int, std::size_t>> log_;
    const rlpo::dist::Reductions& inner_;
};

struct Stat {
    std::vector<double> calls, doubles, comm, replay, total;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    MPI_Init(&argc, &argv);
    {
        const rlpo::dist::MpiReductions mpi(MPI_COMM_WORLD);
        const CountingReductions red(mpi);
        const long prompts = argc > 1 ? std::atol(argv[1]) : 4096;
        const long group = argc > 2 ? std::atol(argv[2]) : 16;
        const long T = argc > 3 ? std::atol(argv[3]) : 1024;
        const int reps = argc > 4 ? std::atoi(argv[4]) : 3;
        const int P = mpi.size(), r = mpi.rank();
        // whole groups per rank, as even as the group count allows
        const long g0 = prompts * r / P, g1 = prompts * (r + 1) / P;
        const rlpo::Index B = (g1 - g0) * group;
        rlpo::testing::Generator gen(17 + static_cast<std::uint64_t>(r));
        using M = rlpo::Mat<float>;
        const M logp = gen.normal<float>(B, T, 0.3, -1.0);
        const M old_logp = logp + gen.normal<float>(B, T, 0.05);
        const M ref_logp = logp + gen.normal<float>(B, T, 0.1);
        const M mask = gen.mask<float>(B, T, 1, false);
        const M rewards = gen.normal<float>(B, T, 0.5);
        rlpo::Vec<float> scores(B);
        for (rlpo::Index i = 0; i < B; ++i) scores(i) = gen.uniform() < 0.5f ? 1.0f : 0.0f;
        std::vector<long> ids;
        for (long g = g0; g < g1; ++g)
            for (long k = 0; k < group; ++k) ids.push_back(g);

        std::map<std::string, Stat> stats;
        std::vector<std::string> order;
        const auto timed = [&](const std::string& name, auto&& f) {
            MPI_Barrier(MPI_COMM_WORLD);
            red.reset();
            const auto t0 = Clock::now();
            f();
            const double total = std::chrono::duration<double>(Clock::now() - t0).count();
            if (!stats.count(name)) order.push_back(name);
            Stat& s = stats[name];
            s.calls.push_back(static_cast<double>(red.calls_));
            s.doubles.push_back(red.doubles_);
            s.comm.push_back(red.seconds_);
            s.total.push_back(total);
            s.replay.push_back(red.replay());
        };
        namespace rd = rlpo::dist;
        for (int rep = 0; rep < reps; ++rep) {
            M adv;
            timed("dist::grpo_advantages (batch std)", [&] {
                const auto a = rd::grpo_advantages(
                    scores, ids,
                    rlpo::rollout::GRPOOptions::trl(rlpo::rollout::AdvantageScale::Batch), red);
                adv = rlpo::rollout::broadcast_to_tokens(a, mask);
            });
            timed("rollout::reinforce_pp_advantages (whitening)", [&] {
                const auto a = rlpo::rollout::reinforce_pp_advantages(rewards, mask, {}, red);
                (void)a;
            });
            rlpo::train::StepOptions o;
            o.kl = rlpo::penalties::KLOptions{};
            timed("dist::with_global_counts (normaliser)",
                  [&] { o.norm = rd::with_global_counts(o.norm, mask, red); });
            timed("TrainingStep (PPO + k3 KL) + dist::reduce", [&] {
                rlpo::train::StepInputs<float> in;
                in.logp = logp;
                in.mask = mask;
                in.advantages = adv;
                in.old_logp = old_logp;
                in.ref_logp = ref_logp;
                auto res = rlpo::train::TrainingStep<float>(o)(in);
                rd::reduce(res, red);
            });
            timed("policy::kl_cov (rho 2e-4) + dist::reduce", [&] {
                auto res = rlpo::policy::kl_cov(logp, old_logp, adv, mask, {}, o.norm, {},
                                                std::nullopt, red);
                rd::reduce(res, red);
            });
        }
        if (r == 0) {
            const double tokens = static_cast<double>(B) * static_cast<double>(T);
            std::printf(
                "mini-batch %ld x %ld responses x %ld tokens, %d ranks; rank 0 holds %ld x "
                "%ld tokens (float); medians of %d steps\n",
                prompts, group, T, P, static_cast<long>(B), T, reps);
            std::printf("%-46s %6s %12s %10s %10s %10s\n", "function", "calls", "doubles/rank",
                        "in coll ms", "alone ms", "total ms");
            double calls = 0, doubles = 0, comm = 0, replay = 0, total = 0;
            for (const auto& name : order) {
                const Stat& s = stats[name];
                std::printf("%-46s %6.0f %12.0f %10.3f %10.3f %10.1f\n", name.c_str(),
                            median(s.calls), median(s.doubles), 1e3 * median(s.comm),
                            1e3 * median(s.replay), 1e3 * median(s.total));
                calls += median(s.calls), doubles += median(s.doubles);
                comm += median(s.comm), replay += median(s.replay), total += median(s.total);
            }
            std::printf("%-46s %6.0f %12.0f %10.3f %10.3f %10.1f\n", "per step", calls, doubles,
                        1e3 * comm, 1e3 * replay, 1e3 * total);
            std::printf(
                "for comparison, shipping rank 0's log-probs: %.0f floats (%.1f MB); its "
                "logits: V times that\n",
                tokens, 4.0 * tokens / 1e6);
        }
    }
    MPI_Finalize();
    return 0;
}
