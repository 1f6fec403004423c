#pragma once
/// \file Umbrella of the distillation divergences over logits.
#include <rlpo/distill/divergences.hpp>
#include <rlpo/distill/topk.hpp>
