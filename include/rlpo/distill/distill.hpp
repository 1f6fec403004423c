#pragma once
/// \file Umbrella of the distillation divergences over logits.
