#pragma once
/// \file
/// One name table for every name-based factory (config spellings → enum values).
///
/// A table is a static array of (name, value) rows, declared once next to its enum:
///
/// ```cpp
/// inline constexpr NameRow<Aggregation> aggregation_names[] = {
///     {"token-mean", Aggregation::TokenMean},   // the first row of a value is its canonical name
///     …,
///     {"dapo", Aggregation::TokenMean},         // aliases (other anchors' spellings) follow
/// };
/// inline constexpr NameTable aggregation_table{aggregation_names};
/// ```
///
/// `parse(fn, what, name)` returns the value of `name` or throws `rlpo::invalid_argument`
///     `rlpo::<fn>(): name: unknown <what> '<name>'; valid names: <every name, in table order>`
/// and `name_of(value)` gives the canonical name (the first row holding `value`; "?" if none),
/// which `to_string` returns. Lookup is a linear scan: tables have a few dozen rows at most and
/// are parsed once per configuration, never per token.

#include <rlpo/core/error.hpp>

#include <cstddef>
#include <string>

namespace rlpo {

/// One spelling of an enum value.
template <class E>
struct NameRow {
    const char* name;
    E value;
};

/// A view over an array of NameRow with static storage (see the file comment).
template <class E>
class NameTable {
public:
    template <std::size_t N>
    constexpr explicit NameTable(const NameRow<E> (&rows)[N]) : rows_(rows), size_(N) {}
    /// Over `size` rows at `rows` (a table built once at run time, e.g. from a registry).
    constexpr NameTable(const NameRow<E>* rows, std::size_t size) : rows_(rows), size_(size) {}

    /// The value spelled `name`; unknown names throw listing every valid name.
    E parse(const char* function, const char* what, const std::string& name) const {
        std::string valid;
        for (std::size_t k = 0; k < size_; ++k) {
            if (name == rows_[k].name) return rows_[k].value;
            valid += valid.empty() ? "" : ", ";
            valid += rows_[k].name;
        }
        detail::fail(function, "name: unknown ", what, " '", name, "'; valid names: ", valid);
    }
    /// The canonical (first listed) name of `value`, "?" for a value without a row.
    const char* name_of(E value) const {
        for (std::size_t k = 0; k < size_; ++k)
            if (rows_[k].value == value) return rows_[k].name;
        return "?";
    }
    /// Whether `name` is one of the table's spellings.
    bool contains(const std::string& name) const {
        for (std::size_t k = 0; k < size_; ++k)
            if (name == rows_[k].name) return true;
        return false;
    }
    constexpr std::size_t size() const { return size_; }
    const NameRow<E>& operator[](std::size_t k) const { return rows_[k]; }

private:
    const NameRow<E>* rows_;
    std::size_t size_;
};

}  // namespace rlpo
