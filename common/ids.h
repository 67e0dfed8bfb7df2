// Random identifiers (execution ids, temp names). Lowercase hex from the
// kernel's CSPRNG, so ids are unguessable and safe in paths and domain names.
#pragma once

#include <string>

namespace berth {

std::string RandomHex(size_t chars);

}  // namespace berth
