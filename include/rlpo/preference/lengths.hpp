#pragma once
/// \file
/// `CompletionLengths`: the completion token counts |y_c|, |y_r| that the length-normalised
/// preference losses read (DPO's `ipo` and `sigmoid_norm`, CPO's `ipo` and `simpo`, ORPO) and
/// that the NLL terms of CPO and ORPO divide by.

#include <Eigen/Core>

namespace rlpo::preference {

/// Completion lengths |y_c|, |y_r| (tokens, `[B]` each). Where a loss averages a summed log-prob
/// over its completion, the length is clamped ≥ 1, as TRL's `completion_mask.sum(1).clamp(min=1)`.
struct CompletionLengths {
    Eigen::VectorXd chosen, rejected;
};

}  // namespace rlpo::preference
