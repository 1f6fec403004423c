#pragma once
/// \file Umbrella of the train module: the training step composing every term of the loss, and
/// the step from logits.
#include <rlpo/train/from_logits.hpp>
#include <rlpo/train/step.hpp>
