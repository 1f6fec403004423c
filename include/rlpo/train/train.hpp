#pragma once
/// \file Umbrella of the train module: the training step composing every term of the loss.
#include <rlpo/train/step.hpp>
