// rlpo demo: train a tiny autoregressive policy on a verifiable task with rlpo's training step.
//
//   rlpo_demo [--objective grpo|drgrpo|rloo|dapo|gspo|cispo|ppo] [--seed N] [--steps N]
//             [--no-kl] [--kl-coef X] [--length-shaping] [--compare] [--out DIR] [--quiet]
//
// Per step: sample G responses for each of P prompts from the policy, score them, compute
// advantages (GRPO / RLOO / Dr.GRPO / GAE with a critic ...), then for each mini-batch run the
// model forward, call rlpo::train::step_from_logits once (the sampled tokens' log-probs, then
// the training step: surrogate + KL + entropy + value loss → loss, d/dlogits including the
// log-softmax's backward, d/dvalues, metrics), back-propagate to the parameters and take an
// Adam step. Writes DIR/metrics.csv and DIR/demo.png (gnuplot). The last line reads
// "final accuracy <end> (start <start>)" (greedy decoding, exact match, all 100 prompts).
#include "model.hpp"
#include "objectives.hpp"
#include "report.hpp"
#include "task.hpp"
#ifdef RLPO_DEMO_MPI
#include "parallel.hpp"

#include <rlpo/dist/mpi.hpp>
#endif

#include <rlpo/logits/token_logps.hpp>
#include <rlpo/rollout/groups.hpp>
#include <rlpo/train/from_logits.hpp>
#include <rlpo/train/step.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace demo {

struct Config {
    std::string objective = "grpo";
    int steps = 500;
    int prompts = 32;  // P prompts per step
    int group = 16;    // G responses per prompt
    int max_len = 6;   // T
    int minibatches = 2;
    std::uint64_t seed = 1;
    bool kl = true;
    double kl_coef = 0.04;  // β of the GRPO paper
    bool length_shaping = false;
    bool compare = false;
    bool quiet = false;
    std::string out = "demo_out";
    float lr = 3e-3f;
    int hidden = 128;
    int dim = 32;
    double entropy_coef = 0.03;  // keeps exploring prompts whose group collapsed
};

struct Rollout {
    Index N = 0, T = 0;
    std::vector<int> a, b;
    std::vector<std::vector<int>> resp;
    RM mask, old_logp, tokens;
    rlpo::Vec<float> score;
    std::vector<bool> truncated;
    double correct = 0.0;
};

inline int sample_from(const float* z, int V, std::mt19937_64& rng, float& logp) {
    float mx = z[0];
    for (int v = 1; v < V; ++v) mx = std::max(mx, z[v]);
    double sum = 0.0;
    for (int v = 0; v < V; ++v) sum += std::exp(static_cast<double>(z[v] - mx));
    const double lse = static_cast<double>(mx) + std::log(sum);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    double x = u(rng), acc = 0.0;
    int pick = V - 1;
    for (int v = 0; v < V; ++v) {
        acc += std::exp(static_cast<double>(z[v]) - lse);
        if (x < acc) {
            pick = v;
            break;
        }
    }
    logp = static_cast<float>(static_cast<double>(z[pick]) - lse);
    return pick;
}

inline Rollout sample(Net& policy, const Config& cfg, std::mt19937_64& rng) {
    Rollout r;
    r.N = static_cast<rlpo::Index>(cfg.prompts) * cfg.group;
    r.T = cfg.max_len;
    std::uniform_int_distribution<int> digit(0, 9);
    for (int p = 0; p < cfg.prompts; ++p) {
        const int a = digit(rng), b = digit(rng);
        for (int g = 0; g < cfg.group; ++g) r.a.push_back(a), r.b.push_back(b);
    }
    r.resp.assign(static_cast<std::size_t>(r.N), {});
    r.mask = RM::Zero(r.N, r.T);
    r.old_logp = RM::Zero(r.N, r.T);
    r.tokens = RM::Zero(r.N, r.T);
    std::vector<Index> alive(static_cast<std::size_t>(r.N));
    for (Index i = 0; i < r.N; ++i) alive[static_cast<std::size_t>(i)] = i;
    for (int t = 0; t < r.T && !alive.empty(); ++t) {
        std::vector<Context> ctx;
        for (Index i : alive) {
            const auto& y = r.resp[static_cast<std::size_t>(i)];
            ctx.push_back({r.a[static_cast<std::size_t>(i)], r.b[static_cast<std::size_t>(i)],
                           t == 0 ? kBos : y.back(), t});
        }
        const RM& z = policy.forward(ctx);
        std::vector<Index> next;
        for (std::size_t k = 0; k < alive.size(); ++k) {
            const Index i = alive[k];
            float lp = 0;
            const int tok = sample_from(z.row(static_cast<Index>(k)).data(), kVocab, rng, lp);
            r.resp[static_cast<std::size_t>(i)].push_back(tok);
            r.mask(i, t) = 1;
            r.old_logp(i, t) = lp;
            r.tokens(i, t) = static_cast<float>(tok);
            if (tok != kEos) next.push_back(i);
        }
        alive = std::move(next);
    }
    r.score.resize(r.N);
    r.truncated.assign(static_cast<std::size_t>(r.N), false);
    for (Index i = 0; i < r.N; ++i) {
        bool ok = false;
        const auto k = static_cast<std::size_t>(i);
        r.score(i) = static_cast<float>(reward(r.a[k], r.b[k], r.resp[k], ok));
        r.correct += ok ? 1.0 : 0.0;
        r.truncated[k] = r.resp[k].back() != kEos;
    }
    r.correct /= static_cast<double>(r.N);
    return r;
}

/// Contexts of rows [i0, i0 + n) × all T positions (row (i − i0)·T + t).
inline std::vector<Context> contexts(const Rollout& r, Index i0, Index n) {
    std::vector<Context> ctx;
    ctx.reserve(static_cast<std::size_t>(n * r.T));
    for (Index i = i0; i < i0 + n; ++i) {
        const auto k = static_cast<std::size_t>(i);
        for (Index t = 0; t < r.T; ++t) {
            const int prev = t == 0 ? kBos
                             : t - 1 < static_cast<Index>(r.resp[k].size())
                                 ? r.resp[k][static_cast<std::size_t>(t - 1)]
                                 : kEos;
            ctx.push_back({r.a[k], r.b[k], prev, static_cast<int>(t)});
        }
    }
    return ctx;
}

/// The sampled tokens of rows [i0, i0 + n) as integer labels ([n, T]; 0 at masked positions).
inline Eigen::Matrix<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> labels(const Rollout& r,
                                                                                  Index i0,
                                                                                  Index n) {
    return r.tokens.middleRows(i0, n).cast<int>();
}

inline double greedy_accuracy(Net& policy, int T) {
    std::vector<Context> ctx;
    std::vector<std::vector<int>> resp(100);
    std::vector<int> alive;
    alive.reserve(100);
    for (int q = 0; q < 100; ++q) alive.push_back(q);
    for (int t = 0; t < T && !alive.empty(); ++t) {
        ctx.clear();
        for (int q : alive)
            ctx.push_back(
                {q / 10, q % 10, t == 0 ? kBos : resp[static_cast<std::size_t>(q)].back(), t});
        const RM& z = policy.forward(ctx);
        std::vector<int> next;
        for (std::size_t k = 0; k < alive.size(); ++k) {
            Index best = 0;
            z.row(static_cast<Index>(k)).maxCoeff(&best);
            resp[static_cast<std::size_t>(alive[k])].push_back(static_cast<int>(best));
            if (best != kEos) next.push_back(alive[k]);
        }
        alive = std::move(next);
    }
    int ok = 0;
    for (int q = 0; q < 100; ++q) {
        bool c = false;
        reward(q / 10, q % 10, resp[static_cast<std::size_t>(q)], c);
        ok += c ? 1 : 0;
    }
    return ok / 100.0;
}

/// One block of rows [i0, i0 + n) of a mini-batch through the policy (and critic), the step
/// and back: the step's result and the parameter gradients of the block (the critic's only
/// when `use_critic`). Shared by the one-process and the data-parallel loops.
struct BlockGrads {
    rlpo::train::StepResult<float> res;
    decltype(std::declval<Net&>().zeros()) policy, critic;
};

inline BlockGrads block_step(const rlpo::train::TrainingStep<float>& step, Net& policy, Net& critic,
                             bool use_critic, const Rollout& r, const Prepared& prep,
                             const RM& ref_logp, const RM& values_old, Index i0, Index n) {
    const auto ctx = contexts(r, i0, n);
    const RM z = policy.forward(ctx);
    rlpo::train::StepInputs<float> in;
    in.logits = z;  // the step computes the log-probs (and their backward) from them
    in.mask = prep.mask.middleRows(i0, n);
    in.advantages = prep.advantages.middleRows(i0, n);
    in.old_logp = r.old_logp.middleRows(i0, n);
    in.ref_logp = ref_logp.middleRows(i0, n);
    RM vpred;
    if (use_critic) {
        const RM& v = critic.forward(ctx);
        vpred = Eigen::Map<const RM>(v.data(), n, r.T);
        in.values = vpred;
        in.old_values = values_old.middleRows(i0, n);
        in.returns = prep.returns.middleRows(i0, n);
    }
    BlockGrads out;
    // d loss / d logits = the logit terms' gradient + the log-softmax's backward of d/dlogp
    out.res = rlpo::train::step_from_logits(step, in, labels(r, i0, n));
    const RM& dz = out.res.grad_logits;
    out.policy = policy.zeros();
    policy.backward(dz, out.policy);  // activations of the forward above
    if (use_critic) {
        out.critic = critic.zeros();
        const RM dv = Eigen::Map<const RM>(out.res.grad_values.data(), n * r.T, 1);
        critic.backward(dv, out.critic);
    }
    return out;
}

/// The reference log-probs and (PPO) rollout-time values of a whole rollout.
inline void reference_and_values(Net& ref, Net& critic, bool use_critic, const Rollout& r,
                                 RM& ref_logp, RM& values_old) {
    const auto ctx = contexts(r, 0, r.N);
    const RM z = ref.forward(ctx);
    ref_logp = rlpo::logits::token_logps(z, labels(r, 0, r.N), r.mask).logp;
    if (use_critic) {
        const RM& v = critic.forward(ctx);
        values_old = Eigen::Map<const RM>(v.data(), r.N, r.T);
    }
}

/// The logged row of one step from the merged results of its mini-batches.
inline void finish_row(Row& row, const rlpo::train::StepResult<float>& agg, const Prepared& prep,
                       int minibatches) {
    const auto& mt = agg.metrics;
    row.kl = mt.contains("actor/kl_loss")     ? mt["actor/kl_loss"]
             : mt.contains("actor/reward_kl") ? mt["actor/reward_kl"]
                                              : prep.kl;
    row.clipfrac = mt.contains("actor/pg_clipfrac") ? mt["actor/pg_clipfrac"] : 0.0;
    row.loss = agg.loss / minibatches;
}

/// Train one objective; returns the per-step rows and fills start / end accuracy.
inline std::vector<Row> train(const Config& cfg, const Objective& obj, double& acc_start,
                              double& acc_end) {
    std::mt19937_64 rng(cfg.seed);
    const int hidden = cfg.hidden, dim = cfg.dim;
    Net policy(kDigits, kVocab + 1, cfg.max_len, dim, hidden, kVocab, rng);
    Net ref = policy;  // frozen reference copy
    Net critic(kDigits, kVocab + 1, cfg.max_len, dim, hidden, 1, rng);
    Adam opt(policy, cfg.lr), copt(critic, cfg.lr);
    const rlpo::train::TrainingStep<float> step(obj.step);

    std::vector<Row> rows;
    acc_start = greedy_accuracy(policy, cfg.max_len);
    Progress bar(cfg.steps, obj.name, cfg.quiet);
    const auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < cfg.steps; ++it) {
        Rollout r = sample(policy, cfg, rng);
        const auto groups = rlpo::rollout::Groups::equal(r.N, cfg.group);
        // reference log-probs and (PPO) rollout-time values
        RM ref_logp, values_old;
        reference_and_values(ref, critic, obj.critic, r, ref_logp, values_old);
        Prepared prep = prepare(obj, r, groups, ref_logp, values_old);

        Row row;
        row.step = it + 1;
        row.reward = static_cast<double>(r.score.mean());
        row.sample_acc = r.correct;
        row.length = static_cast<double>(r.mask.sum()) / static_cast<double>(r.N);
        rlpo::train::StepResult<float> agg;
        const Index mb = r.N / cfg.minibatches;
        for (int m = 0; m < cfg.minibatches; ++m) {
            const Index i0 = m * mb;
            BlockGrads bg =
                block_step(step, policy, critic, obj.critic, r, prep, ref_logp, values_old, i0, mb);
            const auto& res = bg.res;
            opt.step(policy, bg.policy);
            if (obj.critic) copt.step(critic, bg.critic);
            if (m == 0)
                agg = res;
            else
                agg.merge(res);
        }
        row.accuracy = greedy_accuracy(policy, cfg.max_len);
        finish_row(row, agg, prep, cfg.minibatches);
        row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rows.push_back(row);
        bar.update(row);
    }
    bar.done();
    acc_end = rows.empty() ? acc_start : rows.back().accuracy;
    return rows;
}

#ifdef RLPO_DEMO_MPI
/// Data-parallel training (parallel.hpp): this rank's blocks of every mini-batch, gradients
/// exchanged with `exchange`, the library's reductions for advantages, normaliser and metrics.
inline std::vector<Row> train_parallel(const Config& cfg, const Objective& obj, double& acc_start,
                                       double& acc_end, const rlpo::dist::Reductions& red,
                                       const Exchange& exchange) {
    std::mt19937_64 rng(cfg.seed);
    Net policy(kDigits, kVocab + 1, cfg.max_len, cfg.dim, cfg.hidden, kVocab, rng);
    Net ref = policy;
    Net critic(kDigits, kVocab + 1, cfg.max_len, cfg.dim, cfg.hidden, 1, rng);
    Adam opt(policy, cfg.lr), copt(critic, cfg.lr);
    std::vector<Row> rows;
    acc_start = greedy_accuracy(policy, cfg.max_len);
    Progress bar(cfg.steps, obj.name, cfg.quiet || red.rank() != 0);
    const auto t0 = std::chrono::steady_clock::now();
    const Index N = static_cast<Index>(cfg.prompts) * cfg.group, mb = N / cfg.minibatches;
    const Index per_shard = mb / kShards;
    const std::vector<Index> mine =
        owned_rows(N, cfg.minibatches, cfg.group, red.rank(), red.size());
    const int first = red.rank() * kShards / red.size(),
              last = (red.rank() + 1) * kShards / red.size();
    for (int it = 0; it < cfg.steps; ++it) {
        Rollout r = sample(policy, cfg, rng);
        RM ref_logp, values_old;
        reference_and_values(ref, critic, obj.critic, r, ref_logp, values_old);
        const Prepared prep = prepare_rows(obj, r, mine, cfg.group, ref_logp, values_old, red);
        Row row;
        row.step = it + 1;
        row.reward = static_cast<double>(r.score.mean());
        row.sample_acc = r.correct;
        row.length = static_cast<double>(r.mask.sum()) / static_cast<double>(r.N);
        rlpo::train::StepResult<float> agg;
        bool any = false;
        for (int m = 0; m < cfg.minibatches; ++m) {
            // the normaliser of the whole mini-batch from this rank's blocks
            rlpo::train::StepOptions so = obj.step;
            so.norm = rlpo::dist::with_global_counts(
                so.norm,
                prep.mask.middleRows(m * mb + first * per_shard, (last - first) * per_shard), red);
            const rlpo::train::TrainingStep<float> step(so);
            std::vector<float> pg, cg;
            for (int s = first; s < last; ++s) {
                const Index i0 = m * mb + s * per_shard, n = per_shard;
                const BlockGrads bg = block_step(step, policy, critic, obj.critic, r, prep,
                                                 ref_logp, values_old, i0, n);
                const auto& res = bg.res;
                const auto flat = flatten(bg.policy);
                pg.insert(pg.end(), flat.begin(), flat.end());
                if (obj.critic) {
                    const auto cf = flatten(bg.critic);
                    cg.insert(cg.end(), cf.begin(), cf.end());
                }
                if (!any)
                    agg = res, any = true;
                else
                    agg.merge(res);
            }
            // every block's gradient, added in block order: the same sum on every rank
            auto grads = policy.zeros();
            sum_blocks(exchange(pg), pg.size() / static_cast<std::size_t>(last - first), grads);
            opt.step(policy, grads);
            if (obj.critic) {
                auto cgr = critic.zeros();
                sum_blocks(exchange(cg), cg.size() / static_cast<std::size_t>(last - first), cgr);
                copt.step(critic, cgr);
            }
        }
        rlpo::dist::reduce(agg, red);
        row.accuracy = greedy_accuracy(policy, cfg.max_len);
        finish_row(row, agg, prep, cfg.minibatches);
        row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rows.push_back(row);
        bar.update(row);
    }
    bar.done();
    acc_end = rows.empty() ? acc_start : rows.back().accuracy;
    return rows;
}
#endif

}  // namespace demo

#ifdef RLPO_DEMO_MPI
namespace {
const rlpo::dist::MpiReductions* g_red = nullptr;  // set in main: MPI is initialised there
std::vector<float> allgather(const std::vector<float>& mine) {
    std::vector<float> all(mine.size() * static_cast<std::size_t>(g_red->size()));
    MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_FLOAT, all.data(),
                  static_cast<int>(mine.size()), MPI_FLOAT, g_red->comm());
    return all;
}
}  // namespace
#endif

static int run(int argc, char** argv) {
#ifdef RLPO_DEMO_MPI
    const bool root = g_red->rank() == 0;
#else
    const bool root = true;
#endif
    // The model's matrices are tiny: threads would only add synchronisation (and results stay
    // reproducible from the seed).
    Eigen::setNbThreads(1);
    demo::Config cfg;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "rlpo_demo: %s needs a value\n", k.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (k == "--objective")
            cfg.objective = next();
        else if (k == "--seed")
            cfg.seed = std::stoull(next());
        else if (k == "--steps")
            cfg.steps = std::stoi(next());
        else if (k == "--prompts")
            cfg.prompts = std::stoi(next());
        else if (k == "--group")
            cfg.group = std::stoi(next());
        else if (k == "--lr")
            cfg.lr = std::stof(next());
        else if (k == "--no-kl")
            cfg.kl = false;
        else if (k == "--hidden")
            cfg.hidden = std::stoi(next());
        else if (k == "--dim")
            cfg.dim = std::stoi(next());
        else if (k == "--entropy-coef")
            cfg.entropy_coef = std::stod(next());
        else if (k == "--kl-coef")
            cfg.kl_coef = std::stod(next());
        else if (k == "--length-shaping")
            cfg.length_shaping = true;
        else if (k == "--compare")
            cfg.compare = true;
        else if (k == "--out")
            cfg.out = next();
        else if (k == "--quiet")
            cfg.quiet = true;
        else if (k == "--help" || k == "-h") {
            std::printf("%s", demo::kUsage);
            return 0;
        } else {
            std::fprintf(stderr, "rlpo_demo: unknown flag %s\n%s", k.c_str(), demo::kUsage);
            return 2;
        }
    }
    try {
        std::vector<std::string> names{cfg.objective};
        if (cfg.compare) names = demo::compare_set();
        std::vector<demo::Series> all;
        double first_start = 0, first_end = 0;
        for (const auto& name : names) {
            const demo::Objective obj = demo::make_objective(name, cfg.kl, cfg.kl_coef,
                                                             cfg.entropy_coef, cfg.length_shaping);
            double s = 0, e = 0;
#ifdef RLPO_DEMO_MPI
            auto rows = demo::train_parallel(cfg, obj, s, e, *g_red, allgather);
#else
            auto rows = demo::train(cfg, obj, s, e);
#endif
            if (all.empty()) first_start = s, first_end = e;
            if (root)
                std::printf("%-8s accuracy %.2f -> %.2f in %.1f s\n", name.c_str(), s, e,
                            rows.empty() ? 0.0 : rows.back().seconds);
            all.push_back({name, std::move(rows)});
        }
        if (!root) return 0;
        demo::write_outputs(cfg.out, all);
        std::printf("final accuracy %.2f (start %.2f)\n", first_end, first_start);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rlpo_demo: %s\n", e.what());
        return 1;
    }
    return 0;
}

int main(int argc, char** argv) {
#ifdef RLPO_DEMO_MPI
    MPI_Init(&argc, &argv);
    int rc = 0;
    try {
        const rlpo::dist::MpiReductions red(MPI_COMM_WORLD);
        g_red = &red;
        rc = run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rlpo_demo: %s\n", e.what());
        rc = 1;
    }
    if (rc != 0) MPI_Abort(MPI_COMM_WORLD, rc);
    MPI_Finalize();
    return rc;
#else
    return run(argc, argv);
#endif
}
