// Random malformed couplings: every one either resolves or throws std::invalid_argument, and
// never reads or writes out of bounds (run under AddressSanitizer and UBSan in CI:
// cmake -DDEPGRAPH_SANITIZE=ON).
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "resolve.hpp"

using depgraph::CouplingsView;

int main() {
  std::mt19937_64 rng(20261202);
  auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  const int64_t odd_values[] = {-1, 0, 1, 2, 3, 4, 6, 8, 12, int64_t{1} << 40,
                                int64_t{1} << 62, INT64_MAX, INT64_MIN};
  auto odd = [&]() { return odd_values[pick(0, 12)]; };
  int64_t resolved = 0, refused = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    const int64_t num_slots = pick(0, 10);
    std::vector<int64_t> sizes(num_slots);
    for (auto& s : sizes) s = pick(0, 9) == 0 ? odd() : pick(1, 12);
    const int64_t num_couplings = pick(0, 12);
    std::vector<int8_t> kinds(num_couplings);
    std::vector<int64_t> offsets{0}, data;
    for (auto& k : kinds) {
      k = static_cast<int8_t>(pick(0, 19) == 0 ? pick(-2, 8) : pick(0, 4));
      const int64_t n = pick(0, 19) == 0 ? pick(0, 7) : (k == 1 ? 4 : k == 3 ? 4 : k == 2 ? 3 : 2);
      for (int64_t i = 0; i < n; ++i)
        data.push_back(pick(0, 9) == 0 ? odd() : pick(0, std::max<int64_t>(0, num_slots - 1)));
      if (k == 1 && n == 4 && pick(0, 3)) {  // a well-formed 1 -> 1 reshape most of the time
        data[data.size() - 4] = 1;
        data[data.size() - 2] = 1;
      }
      offsets.push_back(static_cast<int64_t>(data.size()));
    }
    if (pick(0, 29) == 0 && offsets.size() > 1) offsets[pick(0, offsets.size() - 1)] = odd();
    if (pick(0, 29) == 0 && !offsets.empty()) offsets.pop_back();
    std::vector<int64_t> query(pick(0, 4));
    for (auto& q : query) q = pick(0, 14) == 0 ? odd() : pick(0, std::max<int64_t>(0, num_slots - 1));
    const CouplingsView view{sizes.data(),   num_slots,
                             kinds.data(),   num_couplings,
                             offsets.data(), static_cast<int64_t>(offsets.size()),
                             data.data(),    static_cast<int64_t>(data.size()),
                             query.data(),   static_cast<int64_t>(query.size())};
    try {
      depgraph::resolve_groups(view);
      ++resolved;
    } catch (const std::invalid_argument&) {
      ++refused;
    }
  }
  std::printf("random couplings: %lld resolved, %lld refused\n", static_cast<long long>(resolved),
              static_cast<long long>(refused));
  return resolved > 100 && refused > 100 ? 0 : 1;  // both paths exercised
}
