#pragma once
/// \file Umbrella of the distillation divergences over logits.
#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/nkd.hpp>
#include <rlpo/distill/on_policy.hpp>
#include <rlpo/distill/sinkhorn.hpp>
#include <rlpo/distill/taid.hpp>
#include <rlpo/distill/topk.hpp>
#include <rlpo/distill/uskd.hpp>
