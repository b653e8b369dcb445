// quickstart: fits y = sin(x) on [-3, 3] with a 1-32-1 tanh MLP, trained by full-batch gradient
// descent written out by hand: forward, loss.backward(), then an update under NoGradGuard.
// Prints the loss as it falls and exits non-zero if it did not fall.
//
//   build/examples/quickstart/quickstart [steps]
#include <veil/veil.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

using veil::Index;
using veil::Tensor;

namespace {

struct Mlp {
  Tensor<float> w1, b1, w2, b2;  // w1: [1, hidden], b1: [hidden], w2: [hidden, 1], b2: [1]

  Mlp(Index hidden, veil::Generator& gen)
      : w1(veil::randn<float>({1, hidden}, gen)),
        b1(veil::randn<float>({hidden}, gen)),
        w2(veil::randn<float>({hidden, 1}, gen, 0.0f, 1.0f / std::sqrt(static_cast<float>(hidden)))),
        b2(veil::zeros<float>({1})) {
    for (Tensor<float>* p : parameters()) p->set_requires_grad(true);
  }

  /// x: [N, 1] -> [N, 1]
  Tensor<float> operator()(const Tensor<float>& x) const {
    return veil::matmul(veil::tanh(veil::matmul(x, w1) + b1), w2) + b2;
  }

  std::vector<Tensor<float>*> parameters() { return {&w1, &b1, &w2, &b2}; }
};

/// p -= learning_rate * p.grad() for every parameter, then clears the gradients.
void sgd_step(const std::vector<Tensor<float>*>& parameters, float learning_rate) {
  veil::NoGradGuard no_grad;  // the update is not part of any graph
  for (Tensor<float>* p : parameters) {
    const Tensor<float> step = p->grad() * learning_rate;
    float* value = p->data();
    const float* delta = step.data();
    for (Index i = 0; i < p->numel(); ++i) value[i] -= delta[i];
    p->zero_grad();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 500;
  constexpr Index points = 64;

  // Training data: 64 evenly spaced x in [-3, 3] and their sines, as [64, 1] columns.
  const Tensor<float> x = (veil::arange<float>(0.0f, static_cast<float>(points)) * (6.0f / (points - 1)) - 3.0f)
                              .reshape({points, 1});
  std::vector<float> sines;
  for (float value : x.to_vector()) sines.push_back(std::sin(value));
  const Tensor<float> y = veil::from_vector<float>(sines, {points, 1});

  veil::Generator gen(42);
  Mlp model(32, gen);
  float first_loss = 0, loss_value = 0;
  for (int step = 0; step <= steps; ++step) {
    const Tensor<float> error = model(x) - y;
    const Tensor<float> loss = veil::mean(error * error);
    loss.backward();
    sgd_step(model.parameters(), 0.05f);
    loss_value = loss.item();
    if (step == 0) first_loss = loss_value;
    if (step % 50 == 0) std::printf("step %4d  loss %.6f\n", step, static_cast<double>(loss_value));
  }

  const bool fell = loss_value < 0.1f * first_loss;
  std::printf("loss %.4f -> %.4f: %s\n", static_cast<double>(first_loss), static_cast<double>(loss_value),
              fell ? "fell more than tenfold" : "did NOT fall tenfold");
  return fell ? 0 : 1;
}
