#pragma once
/// \file Umbrella of the train module: the training step composing every term of the loss, the
/// step from logits, and the DPO-family step from logits.
#include <rlpo/train/from_logits.hpp>
#include <rlpo/train/preference_step.hpp>
#include <rlpo/train/step.hpp>
