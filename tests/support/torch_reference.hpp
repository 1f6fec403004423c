#pragma once
// Differential tests against PyTorch autograd.
//
// A test collects cases (function name, dtype, named input arrays, named scalar or vector
// parameters), `run()` writes them to one file in the build tree, runs
// `/usr/bin/python3 tests/reference/run.py <module> <in> <out>` once, and reads back the
// reference outputs (values and autograd gradients) computed by independently written torch
// formulas in `tests/reference/<module>.py`. A missing torch, a Python error or a missing
// output is a test failure (std::runtime_error), never a skip.
//
// Exchange format (little-endian): "RLPOX1\n", u32 entry count, then per entry
//   u8 kind (0 = f64 array, 1 = string), u32 name length, name bytes,
//   array: u64 rows, u64 cols, rows*cols f64 (row-major); string: u32 length, bytes.
// Entry names: "<case>/fn", "<case>/dtype", "<case>/in/<name>", "<case>/p/<name>"; outputs
// come back as "<case>/<name>".
#include <rlpo/core/types.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace rlpo_test {

using rlpo::Index;
using rlpo::Mat;

class TorchReference {
public:
    struct Case {
        std::string fn, dtype;
        std::vector<std::pair<std::string, Mat<double>>> inputs, params;
        std::vector<std::pair<std::string, std::string>> strings;
        Case& in(const std::string& name, const Mat<double>& x) {
            inputs.emplace_back(name, x);
            return *this;
        }
        template <class S>
        Case& in(const std::string& name, const Mat<S>& x) {
            return in(name, Mat<double>(x.template cast<double>()));
        }
        Case& p(const std::string& name, double v) {
            Mat<double> m(1, 1);
            m(0, 0) = v;
            params.emplace_back(name, m);
            return *this;
        }
        Case& p(const std::string& name, const Mat<double>& v) {
            params.emplace_back(name, v);
            return *this;
        }
        Case& s(const std::string& name, const std::string& v) {
            strings.emplace_back(name, v);
            return *this;
        }
    };

    /// `tag` distinguishes the files of different tests of one module.
    TorchReference(std::string module, std::string tag)
        : module_(std::move(module)), tag_(std::move(tag)) {}

    /// A new case computing `fn` in `dtype` ("float64" or "float32"); returns its index.
    Case& add(const std::string& fn, const std::string& dtype) {
        cases_.push_back(Case{fn, dtype, {}, {}, {}});
        return cases_.back();
    }
    template <class S>
    Case& add(const std::string& fn) {
        return add(fn, sizeof(S) == 4 ? "float32" : "float64");
    }
    std::size_t size() const { return cases_.size(); }

    void run() {
        // a test built for several instruction sets may run concurrently: separate files
#if defined(RLPO_TEST_IO_SUFFIX)
        const std::string base =
            std::string(RLPO_TEST_IO_DIR) + "/" + module_ + "_" + tag_ + RLPO_TEST_IO_SUFFIX;
#else
        const std::string base = std::string(RLPO_TEST_IO_DIR) + "/" + module_ + "_" + tag_;
#endif
        const std::string in = base + ".in", out = base + ".out", err = base + ".err";
        write(in);
        std::remove(out.c_str());
        const std::string cmd = std::string(RLPO_PYTHON) + " " + RLPO_REFERENCE_DIR + "/run.py " +
                                module_ + " " + in + " " + out + " 2> " + err;
        const int rc = std::system(cmd.c_str());
        if (rc != 0) {
            std::ifstream e(err);
            std::stringstream ss;
            ss << e.rdbuf();
            throw std::runtime_error("torch reference failed (rc " + std::to_string(rc) +
                                     "): " + cmd + "\n" + ss.str());
        }
        read(out);
    }

    /// Output `name` of case `c` (throws if the reference did not produce it).
    const Mat<double>& out(std::size_t c, const std::string& name) const {
        const auto it = outputs_.find(std::to_string(c) + "/" + name);
        if (it == outputs_.end())
            throw std::runtime_error("torch reference: no output '" + name + "' for case " +
                                     std::to_string(c));
        return it->second;
    }
    double scalar(std::size_t c, const std::string& name) const { return out(c, name)(0, 0); }

private:
    static void put_u32(std::ofstream& f, std::uint32_t v) {
        f.write(reinterpret_cast<const char*>(&v), 4);
    }
    static void put_u64(std::ofstream& f, std::uint64_t v) {
        f.write(reinterpret_cast<const char*>(&v), 8);
    }
    static void put_str(std::ofstream& f, const std::string& s) {
        put_u32(f, static_cast<std::uint32_t>(s.size()));
        f.write(s.data(), static_cast<std::streamsize>(s.size()));
    }
    static void put_array(std::ofstream& f, const std::string& name, const Mat<double>& m) {
        f.put(0);
        put_str(f, name);
        put_u64(f, static_cast<std::uint64_t>(m.rows()));
        put_u64(f, static_cast<std::uint64_t>(m.cols()));
        f.write(reinterpret_cast<const char*>(m.data()),
                static_cast<std::streamsize>(sizeof(double) * static_cast<std::size_t>(m.size())));
    }
    static void put_string(std::ofstream& f, const std::string& name, const std::string& v) {
        f.put(1);
        put_str(f, name);
        put_str(f, v);
    }

    void write(const std::string& path) const {
        std::ofstream f(path, std::ios::binary);
        if (!f) throw std::runtime_error("torch reference: cannot write " + path);
        f.write("RLPOX1\n", 7);
        std::uint32_t n = 0;
        for (const auto& c : cases_)
            n += 2 +
                 static_cast<std::uint32_t>(c.inputs.size() + c.params.size() + c.strings.size());
        put_u32(f, n);
        for (std::size_t i = 0; i < cases_.size(); ++i) {
            const auto& c = cases_[i];
            const std::string pre = std::to_string(i) + "/";
            put_string(f, pre + "fn", c.fn);
            put_string(f, pre + "dtype", c.dtype);
            for (const auto& e : c.inputs) put_array(f, pre + "in/" + e.first, e.second);
            for (const auto& e : c.params) put_array(f, pre + "p/" + e.first, e.second);
            for (const auto& e : c.strings) put_string(f, pre + "s/" + e.first, e.second);
        }
    }

    void read(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) throw std::runtime_error("torch reference: no output file " + path);
        char magic[7];
        f.read(magic, 7);
        if (std::string(magic, 7) != "RLPOX1\n")
            throw std::runtime_error("torch reference: bad magic");
        std::uint32_t n = 0;
        f.read(reinterpret_cast<char*>(&n), 4);
        for (std::uint32_t e = 0; e < n; ++e) {
            const int kind = f.get();
            std::uint32_t len = 0;
            f.read(reinterpret_cast<char*>(&len), 4);
            std::string name(len, '\0');
            f.read(name.data(), len);
            if (kind != 0) throw std::runtime_error("torch reference: unexpected output kind");
            std::uint64_t r = 0, c = 0;
            f.read(reinterpret_cast<char*>(&r), 8);
            f.read(reinterpret_cast<char*>(&c), 8);
            Mat<double> m(static_cast<Index>(r), static_cast<Index>(c));
            f.read(reinterpret_cast<char*>(m.data()),
                   static_cast<std::streamsize>(sizeof(double) * r * c));
            outputs_[name] = std::move(m);
        }
        if (!f) throw std::runtime_error("torch reference: truncated output " + path);
    }

    std::string module_, tag_;
    std::vector<Case> cases_;
    std::map<std::string, Mat<double>> outputs_;
};

}  // namespace rlpo_test
