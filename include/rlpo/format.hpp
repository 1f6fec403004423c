#pragma once
/// \file
/// Opt-in fmt formatters (requires {fmt} ≥ 8; not included by rlpo.hpp):
///
///     fmt::print("{}\n", result.metrics);   // pg_clipfrac=0.0312 pg_clipfrac_lower=0 ppo_kl=…
///     fmt::print("{}\n", result);           // value=0.1234 grad=[4x8] pg_clipfrac=…
///     fmt::print("{}\n", rlpo::Aggregation::TokenMean);   // token-mean

#include <rlpo/core/aggregation.hpp>
#include <rlpo/core/metrics.hpp>
#include <rlpo/core/result.hpp>

#include <fmt/format.h>

template <>
struct fmt::formatter<rlpo::Metrics> {
    constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
    template <class Ctx>
    auto format(const rlpo::Metrics& m, Ctx& ctx) const {
        auto it = ctx.out();
        bool first = true;
        for (const auto& e : m) {
            it = fmt::format_to(it, "{}{}={:.6g}", first ? "" : " ", e.first, e.second.value());
            first = false;
        }
        return it;
    }
};

template <class S>
struct fmt::formatter<rlpo::Result<S>> {
    constexpr auto parse(format_parse_context& ctx) { return ctx.begin(); }
    template <class Ctx>
    auto format(const rlpo::Result<S>& r, Ctx& ctx) const {
        auto it = fmt::format_to(ctx.out(), "value={:.8g} grad=[{}x{}]", r.value, r.grad.rows(),
                                 r.grad.cols());
        if (!r.metrics.empty()) it = fmt::format_to(it, " {}", r.metrics);
        return it;
    }
};

template <>
struct fmt::formatter<rlpo::Aggregation> : fmt::formatter<fmt::string_view> {
    template <class Ctx>
    auto format(rlpo::Aggregation a, Ctx& ctx) const {
        return fmt::formatter<fmt::string_view>::format(rlpo::to_string(a), ctx);
    }
};
