// Uses veil through its public front door and checks a forward value and a gradient.
// Exit code 0 when both are right, 1 otherwise.
#include <veil/veil.hpp>

#include <cmath>
#include <iostream>
#include <vector>

int main() {
  // y = x * x * w + b, broadcast over rows; dy/dx = 2 x w, dL/dw = sum over rows of x^2 for L = sum(y).
  auto x = veil::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  auto w = veil::from_vector<double>({0.5, -1, 2}, {3});
  auto b = veil::full<double>({1}, 0.25);
  x.set_requires_grad(true);
  w.set_requires_grad(true);
  auto y = x * x * w + b;
  y.backward(veil::ones<double>(y.shape()));

  const std::vector<double> xs = x.to_vector(), ws = w.to_vector(), ys = y.to_vector();
  const std::vector<double> dx = x.grad().to_vector(), dw = w.grad().to_vector();
  int failures = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double expected_y = xs[i] * xs[i] * ws[i % 3] + 0.25;
    const double expected_dx = 2 * xs[i] * ws[i % 3];
    if (std::abs(ys[i] - expected_y) > 1e-12 || std::abs(dx[i] - expected_dx) > 1e-12) {
      std::cerr << "element " << i << ": y = " << ys[i] << " (expected " << expected_y << "), dy/dx = " << dx[i]
                << " (expected " << expected_dx << ")\n";
      ++failures;
    }
  }
  for (std::size_t j = 0; j < 3; ++j) {
    const double expected_dw = xs[j] * xs[j] + xs[j + 3] * xs[j + 3];
    if (std::abs(dw[j] - expected_dw) > 1e-12) {
      std::cerr << "dL/dw[" << j << "] = " << dw[j] << " (expected " << expected_dw << ")\n";
      ++failures;
    }
  }
  std::cout << "veil " << VEIL_VERSION_MAJOR << '.' << VEIL_VERSION_MINOR << '.' << VEIL_VERSION_PATCH
            << " consumer: " << (failures == 0 ? "ok" : "FAILED") << '\n';
  return failures == 0 ? 0 : 1;
}
