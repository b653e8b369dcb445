// Training, evaluation and sampling for the nanogpt example: the loop nanoGPT's train.py runs
// (AdamW with decay on 2-D weights only, warmup + cosine learning rate, gradient clipping,
// periodic train/validation estimates, best checkpoint), plus progress, loss.csv and an SVG curve.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "data.hpp"
#include "model.hpp"

namespace nanogpt {

struct TrainOptions {
  GptConfig model;
  std::string data;
  std::optional<std::string> documents;  // separator line: pack whole documents per row
  std::string out = "out-nanogpt";
  Index batch_size = 12;
  Index max_iters = 2000;
  double lr = 1e-3;
  double min_lr = 1e-4;
  Index warmup_iters = 100;
  Index lr_decay_iters = 2000;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.99;
  double grad_clip = 1.0;        // 0 disables clipping
  Index eval_interval = 250;
  Index eval_iters = 20;
  Index log_interval = 10;
  std::uint64_t seed = 1337;
  int threads = 0;               // 0: all cores
  bool resume = false;
  double max_seconds = 0;        // stop after this much training time (0: no limit)
};

// ---- checkpoints -------------------------------------------------------------------------------

inline nlohmann::json config_json(const GptConfig& config) {
  return {{"vocab_size", config.vocab_size}, {"block_size", config.block_size}, {"n_layer", config.n_layer},
          {"n_head", config.n_head},         {"n_embd", config.n_embd},         {"dropout", config.dropout},
          {"bias", config.bias}};
}

inline GptConfig config_from_json(const std::string& text, const std::string& source) {
  GptConfig config;
  try {
    const auto json = nlohmann::json::parse(text);
    config.vocab_size = json.at("vocab_size").get<Index>();
    config.block_size = json.at("block_size").get<Index>();
    config.n_layer = json.at("n_layer").get<Index>();
    config.n_head = json.at("n_head").get<Index>();
    config.n_embd = json.at("n_embd").get<Index>();
    config.dropout = json.value("dropout", 0.0);
    config.bias = json.value("bias", true);
  } catch (const nlohmann::json::exception& error) {
    throw UsageError("checkpoint '" + source + "' has no valid model config in its metadata (" + error.what() + ")");
  }
  return config;
}

struct Checkpoint {
  GptConfig config;
  Vocabulary vocabulary;
  veil::nn::StateDict<float> tensors;
  std::map<std::string, std::string> metadata;
};

/// Reads a checkpoint written by `train` (or by the PyTorch export script): safetensors whose
/// metadata holds "vocab" (the characters in id order) and "config" (JSON).
inline Checkpoint read_checkpoint(const std::string& path) {
  if (!std::filesystem::exists(path)) throw UsageError("checkpoint '" + path + "' does not exist");
  auto file = veil::io::load_safetensors(path);
  Checkpoint checkpoint;
  checkpoint.metadata = file.metadata();
  const auto vocab = checkpoint.metadata.find("vocab");
  const auto config = checkpoint.metadata.find("config");
  if (vocab == checkpoint.metadata.end() || config == checkpoint.metadata.end())
    throw UsageError("checkpoint '" + path + "' has no \"vocab\" and \"config\" metadata; it was not written by nanogpt");
  checkpoint.vocabulary = Vocabulary(decode_utf8(vocab->second, path + " (vocab)"));
  checkpoint.config = config_from_json(config->second, path);
  if (checkpoint.config.vocab_size != checkpoint.vocabulary.size())
    throw UsageError("checkpoint '" + path + "': config vocab_size " + std::to_string(checkpoint.config.vocab_size) +
                     " differs from the " + std::to_string(checkpoint.vocabulary.size()) + " characters of its vocab");
  for (const auto& entry : file.entries())
    if (entry.name.rfind("optimizer.", 0) != 0) checkpoint.tensors.emplace(entry.name, file.get<float>(entry.name));
  return checkpoint;
}

/// The model in a checkpoint, in eval mode.
inline std::unique_ptr<Gpt> load_model(const Checkpoint& checkpoint) {
  veil::Generator init(0);
  GptConfig config = checkpoint.config;
  config.dropout = 0;  // inference
  auto model = std::make_unique<Gpt>(config, init);
  try {
    model->load_checkpoint(checkpoint.tensors);
  } catch (const veil::IoError& error) {
    throw UsageError(std::string("the checkpoint does not fit its own model config (another architecture?): ") +
                     error.what());
  }
  model->eval();
  return model;
}

// ---- evaluation --------------------------------------------------------------------------------

/// Mean cross-entropy of `model` over batches drawn by `next_batch` (no gradients, eval mode).
template <class NextBatch>
double mean_loss(Gpt& model, Index batches, NextBatch&& next_batch) {
  veil::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  double total = 0;
  for (Index i = 0; i < batches; ++i) {
    const Batch batch = next_batch();
    const auto logits = model.forward(batch.inputs, batch.positions, batch.mask);
    total += veil::cross_entropy(logits, batch.targets, {.ignore_index = ignore_target}).item();
  }
  model.train(was_training);
  return total / static_cast<double>(std::max<Index>(batches, 1));
}

/// nanogpt eval: mean cross-entropy over non-overlapping windows of the validation split taken
/// in order: window i has inputs at offsets [i·T, i·T + T) and targets shifted by one.
inline double evaluate_windows(Gpt& model, const std::vector<std::int64_t>& tokens, Index windows) {
  const Index T = model.config().block_size;
  const Index fit = (static_cast<Index>(tokens.size()) - 1) / T;
  if (fit < 1)
    throw UsageError("the validation split has " + std::to_string(tokens.size()) + " tokens; block size " +
                     std::to_string(T) + " needs at least " + std::to_string(T + 1));
  if (windows <= 0 || windows > fit) windows = fit;
  constexpr Index windows_per_batch = 8;
  veil::NoGradGuard no_grad;
  model.eval();
  double total = 0;  // summed over every target, then divided once: all windows weigh the same
  for (Index first = 0; first < windows; first += windows_per_batch) {
    const Index count = std::min(windows_per_batch, windows - first);
    auto inputs = Tensor<std::int64_t>::empty({count, T}), targets = Tensor<std::int64_t>::empty({count, T});
    for (Index w = 0; w < count; ++w)
      for (Index t = 0; t < T; ++t) {
        inputs.data()[w * T + t] = tokens[(first + w) * T + t];
        targets.data()[w * T + t] = tokens[(first + w) * T + t + 1];
      }
    const auto logits = model.forward(inputs);
    total += veil::cross_entropy(logits, targets, {.reduction = veil::Reduction::sum}).item();
  }
  return total / static_cast<double>(windows * T);
}

// ---- sampling ----------------------------------------------------------------------------------

struct SampleOptions {
  std::string prompt = "\n";
  Index max_new_tokens = 500;
  double temperature = 0.8;
  Index top_k = 200;  // 0: no top-k filter
  std::uint64_t seed = 1337;
  bool kv_cache = true;
};

/// Draws a token from the last row of `logits` [1, T, V] (temperature, then top-k, then softmax).
inline std::int64_t draw(const Tensor<float>& logits, const SampleOptions& options, veil::Generator& generator) {
  const Index V = logits.size(2), T = logits.size(1);
  const Tensor<float> last = logits.contiguous();
  const float* row = last.data() + (T - 1) * V;
  std::vector<double> scaled(static_cast<std::size_t>(V));
  for (Index c = 0; c < V; ++c) scaled[c] = static_cast<double>(row[c]) / std::max(options.temperature, 1e-8);
  if (options.top_k > 0 && options.top_k < V) {
    std::vector<double> sorted = scaled;
    std::nth_element(sorted.begin(), sorted.begin() + (V - options.top_k), sorted.end());
    const double threshold = sorted[V - options.top_k];
    for (auto& value : scaled)
      if (value < threshold) value = -std::numeric_limits<double>::infinity();
  }
  const double max = *std::max_element(scaled.begin(), scaled.end());
  double total = 0;
  for (auto& value : scaled) total += (value = std::exp(value - max));
  double target = generator.uniform() * total;
  for (Index c = 0; c < V; ++c)
    if ((target -= scaled[c]) < 0) return c;
  return V - 1;
}

/// Extends `tokens` by max_new_tokens samples. With the KV cache, each step feeds only the new
/// token; when the context reaches block_size the cache restarts from the last block_size tokens,
/// exactly the window the uncached path recomputes, so both draw the same tokens.
inline std::vector<std::int64_t> generate(Gpt& model, std::vector<std::int64_t> tokens, const SampleOptions& options) {
  veil::NoGradGuard no_grad;
  veil::Generator generator(options.seed);
  const Index block = model.config().block_size;
  KvCache cache;
  const auto window = [&](Index from) {
    const Index count = static_cast<Index>(tokens.size()) - from;
    Tensor<std::int64_t> ids = Tensor<std::int64_t>::empty({1, count});
    std::copy(tokens.begin() + from, tokens.end(), ids.data());
    return ids;
  };
  for (Index step = 0; step < options.max_new_tokens; ++step) {
    const Index length = static_cast<Index>(tokens.size());
    Tensor<float> logits;
    if (!options.kv_cache) {
      logits = model.forward(window(std::max<Index>(0, length - block)));
    } else if (cache.length() == 0 || cache.length() >= block) {
      cache.clear();
      logits = model.forward(window(std::max<Index>(0, length - block)), {}, veil::mask::causal(), &cache);
    } else {
      logits = model.forward(window(length - 1), {}, veil::mask::causal(), &cache);
    }
    tokens.push_back(draw(logits, options, generator));
  }
  return tokens;
}

// ---- training ----------------------------------------------------------------------------------

/// loss.csv rows and the SVG picture of the curves.
class LossLog {
 public:
  struct Row {
    Index iteration;
    double train_loss, val_loss, lr;  // val_loss NaN when not evaluated
  };

  void add(Row row) { rows_.push_back(row); }
  void keep_before(Index iteration) {
    std::erase_if(rows_, [&](const Row& row) { return row.iteration >= iteration; });
  }
  void read(const std::filesystem::path& csv) {
    std::ifstream in(csv);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      Row row{};
      std::string cell;
      std::getline(fields, cell, ','), row.iteration = std::stoll(cell);
      std::getline(fields, cell, ','), row.train_loss = cell.empty() ? NAN : std::stod(cell);
      std::getline(fields, cell, ','), row.val_loss = cell.empty() ? NAN : std::stod(cell);
      std::getline(fields, cell, ','), row.lr = std::stod(cell);
      rows_.push_back(row);
    }
  }

  void write(const std::filesystem::path& directory) const {
    {
      std::ofstream csv(directory / "loss.csv.tmp");
      csv << "iteration,train_loss,val_loss,lr\n" << std::setprecision(17);  // exact: resumed runs compare bits
      for (const auto& row : rows_) {
        csv << row.iteration << ',';
        if (!std::isnan(row.train_loss)) csv << row.train_loss;
        csv << ',';
        if (!std::isnan(row.val_loss)) csv << row.val_loss;
        csv << ',' << row.lr << '\n';
      }
    }
    std::filesystem::rename(directory / "loss.csv.tmp", directory / "loss.csv");
    {
      std::ofstream svg(directory / "loss.svg.tmp");
      svg << picture();
    }
    std::filesystem::rename(directory / "loss.svg.tmp", directory / "loss.svg");
  }

 private:
  std::string picture() const {
    constexpr double width = 720, height = 400, left = 60, right = 20, top = 30, bottom = 45;
    double max_iteration = 1, lowest = 1e30, highest = -1e30;
    for (const auto& row : rows_) {
      max_iteration = std::max(max_iteration, static_cast<double>(row.iteration));
      for (double value : {row.train_loss, row.val_loss})
        if (std::isfinite(value)) lowest = std::min(lowest, value), highest = std::max(highest, value);
    }
    if (lowest > highest) lowest = 0, highest = 1;
    if (highest - lowest < 1e-6) highest = lowest + 1;
    const auto x = [&](double iteration) { return left + (width - left - right) * iteration / max_iteration; };
    const auto y = [&](double loss) { return top + (height - top - bottom) * (highest - loss) / (highest - lowest); };
    std::ostringstream out;
    out << std::fixed << std::setprecision(1);
    out << "<svg xmlns='http://www.w3.org/2000/svg' width='" << width << "' height='" << height
        << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
    out << "<text x='" << left << "' y='18'>nanogpt loss (train: blue, validation: orange)</text>\n";
    for (int tick = 0; tick <= 4; ++tick) {
      const double loss = lowest + (highest - lowest) * tick / 4.0;
      out << "<line x1='" << left << "' x2='" << width - right << "' y1='" << y(loss) << "' y2='" << y(loss)
          << "' stroke='#ddd'/><text x='5' y='" << y(loss) + 4 << "'>" << std::setprecision(2) << loss
          << std::setprecision(1) << "</text>\n";
    }
    out << "<text x='" << (width / 2) << "' y='" << height - 10 << "'>iteration (0 to "
        << static_cast<Index>(max_iteration) << ")</text>\n";
    const auto series = [&](bool validation, const char* colour) {
      out << "<polyline fill='none' stroke='" << colour << "' stroke-width='" << (validation ? 2 : 1) << "' points='";
      for (const auto& row : rows_) {
        const double value = validation ? row.val_loss : row.train_loss;
        if (std::isfinite(value)) out << x(static_cast<double>(row.iteration)) << ',' << y(value) << ' ';
      }
      out << "'/>\n";
    };
    series(false, "#1f77b4");
    series(true, "#ff7f0e");
    out << "</svg>\n";
    return out.str();
  }

  std::vector<Row> rows_;
};

inline std::string format_duration(double seconds) {
  const auto total = static_cast<long long>(std::max(0.0, seconds));
  std::ostringstream out;
  if (total >= 3600) out << total / 3600 << "h";
  if (total >= 60) out << (total / 60) % 60 << "m";
  out << total % 60 << "s";
  return out.str();
}

/// Training state beyond the model and optimizer, stored in checkpoint metadata.
struct Progress {
  Index iteration = 0;
  double best_val_loss = 1e30;
  std::uint64_t data_counter = 0, eval_counter = 0, dropout_counter = 0;
};

inline void save_checkpoint(const std::filesystem::path& path, const Gpt& model, const veil::optim::Optimizer<float>& optimizer,
                            const Vocabulary& vocabulary, const Progress& progress) {
  veil::nn::StateDict<float> tensors = model.state_dict();
  for (auto& [name, tensor] : optimizer.state_dict()) tensors.emplace("optimizer." + name, tensor);
  std::ostringstream best;
  best << std::setprecision(17) << progress.best_val_loss;
  veil::io::save_safetensors(path, tensors,
                             {{"vocab", encode_utf8(vocabulary.characters())},
                              {"config", config_json(model.config()).dump()},
                              {"iteration", std::to_string(progress.iteration)},
                              {"best_val_loss", best.str()},
                              {"data_counter", std::to_string(progress.data_counter)},
                              {"eval_counter", std::to_string(progress.eval_counter)},
                              {"dropout_counter", std::to_string(progress.dropout_counter)}});
}

inline void train(const TrainOptions& options) {
  namespace fs = std::filesystem;
  const Corpus corpus = load_corpus(options.data, options.documents);
  GptConfig config = options.model;
  config.vocab_size = corpus.vocabulary.size();
  const Index needed = config.block_size + 1;
  if (static_cast<Index>(corpus.train.tokens.size()) < needed)
    throw UsageError("block size " + std::to_string(config.block_size) + " needs at least " + std::to_string(needed) +
                     " tokens of training text; '" + options.data + "' gives " +
                     std::to_string(corpus.train.tokens.size()));
  if (!options.documents && static_cast<Index>(corpus.validation.tokens.size()) < needed)
    throw UsageError("block size " + std::to_string(config.block_size) + " needs at least " + std::to_string(needed) +
                     " tokens of validation text (the last 10%); '" + options.data + "' gives " +
                     std::to_string(corpus.validation.tokens.size()));
  if (options.threads > 0) veil::set_num_threads(options.threads);

  veil::Generator init(options.seed), data_generator(options.seed + 1), eval_generator(options.seed + 2),
      dropout_generator(options.seed + 3);
  Gpt model(config, init, &dropout_generator);
  const veil::optim::AdamWOptions adamw{options.lr, options.beta1, options.beta2, 1e-8, options.weight_decay};
  veil::optim::AdamW<float> optimizer(veil::optim::weight_decay_groups(model.named_parameters(), adamw));
  const veil::optim::WarmupCosineOptions schedule{options.lr, options.min_lr, options.warmup_iters,
                                                  std::max(options.lr_decay_iters, options.warmup_iters)};

  const fs::path out = options.out;
  Progress progress;
  LossLog log;
  if (options.resume) {
    const fs::path last = out / "last.safetensors";
    if (!fs::exists(last)) throw UsageError("--resume: no checkpoint '" + last.string() + "' to resume from");
    auto file = veil::io::load_safetensors(last.string());
    const auto metadata = file.metadata();
    const GptConfig saved = config_from_json(metadata.at("config"), last.string());
    if (saved.vocab_size != config.vocab_size || saved.n_layer != config.n_layer || saved.n_embd != config.n_embd ||
        saved.n_head != config.n_head || saved.block_size != config.block_size)
      throw UsageError("--resume: '" + last.string() + "' holds another model configuration than the flags ask for");
    veil::nn::StateDict<float> model_tensors, optimizer_tensors;
    for (const auto& entry : file.entries()) {
      if (entry.name.rfind("optimizer.", 0) == 0) optimizer_tensors.emplace(entry.name.substr(10), file.get<float>(entry.name));
      else model_tensors.emplace(entry.name, file.get<float>(entry.name));
    }
    model.load_state_dict(model_tensors);
    optimizer.load_state_dict(optimizer_tensors);
    progress.iteration = std::stoll(metadata.at("iteration"));
    progress.best_val_loss = std::stod(metadata.at("best_val_loss"));
    data_generator.reserve(static_cast<Index>(std::stoull(metadata.at("data_counter"))));
    eval_generator.reserve(static_cast<Index>(std::stoull(metadata.at("eval_counter"))));
    dropout_generator.reserve(static_cast<Index>(std::stoull(metadata.at("dropout_counter"))));
    if (fs::exists(out / "loss.csv")) log.read(out / "loss.csv");
    log.keep_before(progress.iteration);
  }
  fs::create_directories(out);

  const auto batch_from = [&](const Split& split, veil::Generator& generator) {
    return options.documents ? document_batch(split, options.batch_size, config.block_size, generator)
                             : window_batch(split, options.batch_size, config.block_size, generator);
  };
  const auto snapshot = [&](Index iteration) {
    progress.iteration = iteration;
    progress.data_counter = data_generator.counter();
    progress.eval_counter = eval_generator.counter();
    progress.dropout_counter = dropout_generator.counter();
  };

  const bool terminal = isatty(fileno(stdout)) != 0;
  std::cout << "nanogpt: " << model.num_parameters() << " parameters, vocabulary " << config.vocab_size << ", "
            << corpus.train.tokens.size() << " training tokens" << (options.documents ? " in documents" : "") << ", "
            << veil::num_threads() << " threads\n";
  const auto started = std::chrono::steady_clock::now();
  const Index first_iteration = progress.iteration;
  double training_seconds = 0;
  Index iteration = progress.iteration;
  for (;; ++iteration) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const bool out_of_time = options.max_seconds > 0 && elapsed >= options.max_seconds;
    const bool last = iteration >= options.max_iters || out_of_time;
    const double lr = veil::optim::warmup_cosine_lr(iteration, schedule);
    const bool just_resumed = options.resume && iteration == first_iteration;  // evaluated before saving
    if ((iteration % options.eval_interval == 0 && !just_resumed) || last) {
      const double train_loss = mean_loss(model, options.eval_iters, [&] { return batch_from(corpus.train, eval_generator); });
      const double val_loss =
          mean_loss(model, options.eval_iters, [&] { return batch_from(corpus.validation, eval_generator); });
      if (terminal) std::cout << '\r' << std::string(100, ' ') << '\r';
      std::cout << "step " << iteration << ": train loss " << std::fixed << std::setprecision(4) << train_loss
                << ", val loss " << val_loss << std::defaultfloat << std::endl;
      log.add({iteration, NAN, val_loss, lr});
      snapshot(iteration);
      if (val_loss < progress.best_val_loss) {
        progress.best_val_loss = val_loss;
        save_checkpoint(out / "ckpt.safetensors", model, optimizer, corpus.vocabulary, progress);
      }
      save_checkpoint(out / "last.safetensors", model, optimizer, corpus.vocabulary, progress);
      log.write(out);
    }
    if (last) break;

    const auto step_started = std::chrono::steady_clock::now();
    optimizer.set_lr(lr);
    const Batch batch = batch_from(corpus.train, data_generator);
    const auto logits = model.forward(batch.inputs, batch.positions, batch.mask);
    const auto loss = veil::cross_entropy(logits, batch.targets, {.ignore_index = ignore_target});
    loss.backward();
    if (options.grad_clip > 0) veil::optim::clip_grad_norm(model.parameters(), options.grad_clip);
    optimizer.step();
    optimizer.zero_grad();
    const double loss_value = loss.item();
    if (!std::isfinite(loss_value))
      throw UsageError("the loss became " + std::to_string(loss_value) + " at iteration " + std::to_string(iteration) +
                       "; try a lower --lr");
    log.add({iteration, loss_value, NAN, lr});

    const double step_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - step_started).count();
    training_seconds += step_seconds;
    const double steps_done = static_cast<double>(iteration + 1 - first_iteration);
    const double rate = steps_done * static_cast<double>(options.batch_size * config.block_size) / training_seconds;
    double eta = static_cast<double>(options.max_iters - iteration - 1) * training_seconds / steps_done;
    if (options.max_seconds > 0) eta = std::min(eta, options.max_seconds - elapsed);
    std::ostringstream status;
    status << "iter " << iteration + 1 << "/" << options.max_iters << "  loss " << std::fixed << std::setprecision(4)
           << loss_value << "  " << std::setprecision(1) << rate / 1000 << "k tok/s  " << std::setprecision(0)
           << step_seconds * 1000 << " ms/iter  ETA " << format_duration(eta);
    if (terminal) {
      const int filled = static_cast<int>(24.0 * static_cast<double>(iteration + 1) / static_cast<double>(options.max_iters));
      std::cout << "\r[" << std::string(filled, '#') << std::string(24 - filled, '.') << "] " << status.str()
                << std::flush;
    } else if ((iteration + 1) % options.log_interval == 0 || iteration == first_iteration) {
      std::cout << status.str() << '\n';
    }
  }
  if (terminal) std::cout << '\n';
  std::cout << "nanogpt: trained iterations " << first_iteration << " to " << iteration << "; best val loss "
            << std::fixed << std::setprecision(4) << progress.best_val_loss << std::defaultfloat << "; wrote "
            << (out / "ckpt.safetensors").string() << ", loss.csv and loss.svg" << std::endl;
}

}  // namespace nanogpt
