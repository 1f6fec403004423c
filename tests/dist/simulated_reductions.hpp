#pragma once
// A test double of the reductions interface: P "ranks" as P threads of one process, exchanging
// through shared memory. It implements only the four operations, through `gather` (a barrier,
// every rank copies every slot, a barrier), as another engine (NCCL, gloo, torch.distributed)
// would plug in; `sum` adds in rank order with dist::add_in_rank_order.
#include <rlpo/dist/reductions.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dist_test {

class Hub {
public:
    explicit Hub(int P) : P_(P), slots_(static_cast<std::size_t>(P)) {}
    int size() const { return P_; }
    std::vector<std::vector<double>> exchange(int rank, const std::vector<double>& mine) {
        slots_[static_cast<std::size_t>(rank)] = mine;
        barrier();
        std::vector<std::vector<double>> all = slots_;
        barrier();  // nobody overwrites a slot before every rank has copied it
        return all;
    }

private:
    void barrier() {
        std::unique_lock<std::mutex> lock(mu_);
        const long gen = generation_;
        if (++waiting_ == P_) {
            waiting_ = 0;
            ++generation_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return generation_ != gen; });
        }
    }
    int P_;
    std::vector<std::vector<double>> slots_;
    std::mutex mu_;
    std::condition_variable cv_;
    int waiting_ = 0;
    long generation_ = 0;
};

class SimulatedReductions final : public rlpo::dist::Reductions {
public:
    SimulatedReductions(Hub& hub, int rank) : hub_(&hub), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return hub_->size(); }
    void sum(double* x, std::size_t n) const override {
        const auto all = gather(std::vector<double>(x, x + n));
        rlpo::dist::add_in_rank_order(all, x, n);
    }
    void max(double* x, std::size_t n) const override {
        const auto all = gather(std::vector<double>(x, x + n));
        for (std::size_t k = 0; k < n; ++k)
            for (const auto& p : all) x[k] = std::max(x[k], p[k]);
    }
    void min(double* x, std::size_t n) const override {
        const auto all = gather(std::vector<double>(x, x + n));
        for (std::size_t k = 0; k < n; ++k)
            for (const auto& p : all) x[k] = std::min(x[k], p[k]);
    }
    std::vector<std::vector<double>> gather(const std::vector<double>& local) const override {
        return hub_->exchange(rank_, local);
    }
    using Reductions::max;
    using Reductions::min;
    using Reductions::sum;

private:
    Hub* hub_;
    int rank_;
};

// Run f(reductions) on P threads, one per simulated rank; returns each rank's result.
template <class R, class F>
std::vector<R> on_ranks(int P, F&& f) {
    Hub hub(P);
    std::vector<R> out(static_cast<std::size_t>(P));
    std::vector<std::thread> threads;
    for (int r = 0; r < P; ++r)
        threads.emplace_back([&, r] {
            SimulatedReductions red(hub, r);
            out[static_cast<std::size_t>(r)] = f(static_cast<const rlpo::dist::Reductions&>(red));
        });
    for (auto& t : threads) t.join();
    return out;
}

}  // namespace dist_test
