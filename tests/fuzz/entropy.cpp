// Fuzz target: regularizers::entropy_bonus over [B·T, V] logits (−inf entries, extremes,
// NaN in masked rows), every normalizer and gradient destination.
#include <rlpo/regularizers/entropy.hpp>

#include "fuzz_common.hpp"
#include "known_issues.hpp"

namespace {

using rlpo::Index;
using rlpo::Mat;

template <class S>
void one(FuzzedDataProvider& f) {
    const Index B = f.ConsumeIntegralInRange<Index>(0, 6);
    const Index T = f.ConsumeIntegralInRange<Index>(0, 12);
    const Index V = f.ConsumeIntegralInRange<Index>(0, 40);
    fz::trace() << "entropy_bonus<" << (sizeof(S) == 4 ? "float" : "double") << "> B " << B << " T "
                << T << " V " << V << '\n';
    const rlpo::Normalizer norm = fz::normalizer(f);
    Mat<S> m = fz::mask<S>(f, B, T);
    Mat<S> z = fz::matrix<S>(f, B * T, V, fz::Dom::Logit);
    fz::poison_rows(f, z, m, true, "logits");
    const auto on = [&](Index n, Index) { return m(n / T, n % T) != 0; };
    for (Index n = 0; n < z.rows(); ++n)
        for (Index j = 0; j < V; ++j)
            if (on(n, j) && z(n, j) == std::numeric_limits<S>::infinity())
                fz::require_throw("+inf logit in an unmasked row");
    fz::Sink<S> sink;
    sink.decode(f, B * T, V);
    fz::dump("mask", m);
    fz::dump("logits", z);
    if (fz::known::entropy(z, m, norm)) return;
    fz::run("entropy_bonus", [&] {
        const auto r = rlpo::regularizers::entropy_bonus(z, m, norm, sink.out());
        fz::check_result("entropy_bonus", r, sink, B * T, V,
                         [&](Index n, Index) { return m(n / T, n % T) == 0; });
    });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzedDataProvider f(data, size);
    fz::begin_case();
    if (f.ConsumeBool())
        one<float>(f);
    else
        one<double>(f);
    return 0;
}
