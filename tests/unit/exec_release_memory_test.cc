// ExecMsg::release_memory (guest/protocol.h): sent only when set, so older
// agents see the Exec they know, and read back as false when absent.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "guest/protocol.h"

namespace berth::agent {
namespace {

TEST(ExecReleaseMemory, RoundTripsAndIsOmittedWhenUnset) {
  ExecMsg prepare;
  prepare.prepare_only = true;
  prepare.release_memory = true;
  nlohmann::json j = prepare;
  EXPECT_EQ(j.value("release_memory", false), true);
  ExecMsg back = j.get<ExecMsg>();
  EXPECT_TRUE(back.prepare_only);
  EXPECT_TRUE(back.release_memory);

  ExecMsg plain;
  plain.argv = {"/bin/true"};
  nlohmann::json k = plain;
  EXPECT_FALSE(k.contains("release_memory"));
  EXPECT_FALSE(k.get<ExecMsg>().release_memory);
}

}  // namespace
}  // namespace berth::agent
