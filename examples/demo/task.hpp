#pragma once
// The verifiable task: given two digits a and b, emit the two decimal digits of a + b, least
// significant first (as written digit by digit when adding by hand), then EOS:
// "7 5" → "2 1 <eos>", "3 4" → "7 0 <eos>". 100 prompts; vocabulary of 11 tokens (0–9, EOS);
// responses may run up to the length cap. (Ones digit first keeps the first token uniform
// over the prompts, so a policy cannot score by emitting one digit everywhere.) A response is correct when it is exactly the answer followed by EOS.
// The training reward gives partial credit for a correct prefix (a dense but still verifiable
// signal): r = (number of leading tokens that match the answer + EOS) / (its length), so only
// an exact answer scores 1. Accuracy is always exact match.
#include <string>
#include <vector>

namespace demo {

constexpr int kDigits = 10;
constexpr int kEos = 10;
constexpr int kVocab = 11;
constexpr int kBos = 11;  // "previous token" of position 0

inline std::vector<int> answer(int a, int b) {
    const int s = a + b;
    std::vector<int> out;
    out.push_back(s % 10);
    out.push_back(s / 10);
    out.push_back(kEos);
    return out;
}

/// Partial-credit reward in [0, 1] and exact-match correctness of one response.
inline double reward(int a, int b, const std::vector<int>& response, bool& correct) {
    const std::vector<int> want = answer(a, b);
    std::size_t k = 0;
    while (k < want.size() && k < response.size() && response[k] == want[k]) ++k;
    correct = k == want.size() && response.size() == want.size();
    return static_cast<double>(k) / static_cast<double>(want.size());
}

inline std::string show(const std::vector<int>& tokens) {
    std::string s;
    for (int t : tokens) s += t == kEos ? std::string("<eos>") : std::to_string(t);
    return s;
}

}  // namespace demo
