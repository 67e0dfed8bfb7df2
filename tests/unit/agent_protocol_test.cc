// Unit tests of the host <-> guest agent wire protocol (guest/protocol.h).
#include "guest/protocol.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace berth::agent {
namespace {

std::string Header(uint32_t len, uint16_t type, uint16_t reserved = 0) {
  std::string h;
  for (int i = 0; i < 4; ++i) h.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  h.push_back(static_cast<char>(type & 0xff));
  h.push_back(static_cast<char>(type >> 8));
  h.push_back(static_cast<char>(reserved & 0xff));
  h.push_back(static_cast<char>(reserved >> 8));
  return h;
}

std::vector<Frame> DrainAll(FrameDecoder& d) {
  std::vector<Frame> out;
  while (auto f = d.Next()) out.push_back(*f);
  return out;
}

TEST(AgentProtocol, EncodeLayoutIsLittleEndian) {
  std::string f = EncodeFrame(MsgType::kStdout, "abc");
  ASSERT_EQ(f.size(), kHeaderSize + 3);
  EXPECT_EQ(f.substr(0, kHeaderSize), Header(3, 4));
  EXPECT_EQ(f.substr(kHeaderSize), "abc");

  std::string big(0x010203, 'x');
  std::string g = EncodeFrame(MsgType::kPowerOff, big);
  EXPECT_EQ(static_cast<unsigned char>(g[0]), 0x03);
  EXPECT_EQ(static_cast<unsigned char>(g[1]), 0x02);
  EXPECT_EQ(static_cast<unsigned char>(g[2]), 0x01);
  EXPECT_EQ(static_cast<unsigned char>(g[3]), 0x00);
  EXPECT_EQ(static_cast<unsigned char>(g[4]), 10);
  EXPECT_EQ(g[6], 0);
  EXPECT_EQ(g[7], 0);
}

TEST(AgentProtocol, RoundTripSeveralFramesInOneFeed) {
  std::string wire = EncodeFrame(MsgType::kPing, "") + EncodeFrame(MsgType::kStdin, std::string("a\0b", 3)) +
                     EncodeFrame(MsgType::kStderr, "err");
  FrameDecoder d;
  d.Feed(wire);
  auto frames = DrainAll(d);
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].type, MsgType::kPing);
  EXPECT_EQ(frames[0].payload, "");
  EXPECT_EQ(frames[1].type, MsgType::kStdin);
  EXPECT_EQ(frames[1].payload, std::string("a\0b", 3));
  EXPECT_EQ(frames[2].type, MsgType::kStderr);
  EXPECT_EQ(frames[2].payload, "err");
  EXPECT_TRUE(d.error().empty());
  EXPECT_FALSE(d.Next().has_value());
}

TEST(AgentProtocol, PartialFeedsByteByByte) {
  std::string payload;
  for (int i = 0; i < 300; ++i) payload.push_back(static_cast<char>(i));
  std::string wire = EncodeFrame(MsgType::kStdout, payload) + EncodeFrame(MsgType::kPong, "{}") +
                     EncodeFrame(MsgType::kStdin, "");
  FrameDecoder d;
  std::vector<Frame> frames;
  for (size_t i = 0; i < wire.size(); ++i) {
    d.Feed(std::string_view(&wire[i], 1));
    while (auto f = d.Next()) {
      frames.push_back(*f);
      // A frame is complete exactly when its last byte arrived.
      EXPECT_TRUE(i == kHeaderSize + payload.size() - 1 || i == 2 * kHeaderSize + payload.size() + 1 ||
                  i == wire.size() - 1)
          << "frame completed at byte " << i;
    }
  }
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].type, MsgType::kStdout);
  EXPECT_EQ(frames[0].payload, payload);
  EXPECT_EQ(frames[1].type, MsgType::kPong);
  EXPECT_EQ(frames[1].payload, "{}");
  EXPECT_EQ(frames[2].type, MsgType::kStdin);
  EXPECT_TRUE(frames[2].payload.empty());
  EXPECT_TRUE(d.error().empty());
}

TEST(AgentProtocol, HeaderSplitAcrossFeeds) {
  std::string wire = EncodeFrame(MsgType::kExit, "{\"exit_code\":0}");
  FrameDecoder d;
  d.Feed(wire.substr(0, 5));
  EXPECT_FALSE(d.Next().has_value());
  d.Feed(wire.substr(5, 6));
  EXPECT_FALSE(d.Next().has_value());
  d.Feed(wire.substr(11));
  auto f = d.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type, MsgType::kExit);
  EXPECT_EQ(f->payload, "{\"exit_code\":0}");
}

TEST(AgentProtocol, MaxPayloadIsAccepted) {
  std::string payload(kMaxPayload, 'z');
  FrameDecoder d;
  d.Feed(EncodeFrame(MsgType::kStdin, payload));
  auto f = d.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->payload.size(), kMaxPayload);
  EXPECT_TRUE(d.error().empty());
}

TEST(AgentProtocol, OversizeFrameIsAnErrorBeforeThePayloadArrives) {
  FrameDecoder d;
  d.Feed(Header(kMaxPayload + 1, static_cast<uint16_t>(MsgType::kStdout)));
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_FALSE(d.error().empty());
  // Sticky: nothing decodes after a protocol error.
  d.Feed(EncodeFrame(MsgType::kPing, ""));
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_FALSE(d.error().empty());
}

TEST(AgentProtocol, HugeLengthIsAnError) {
  FrameDecoder d;
  d.Feed(Header(0xffffffffu, static_cast<uint16_t>(MsgType::kHello)));
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_NE(d.error().find("exceeds"), std::string::npos) << d.error();
}

TEST(AgentProtocol, NonZeroReservedIsAnError) {
  FrameDecoder d;
  d.Feed(Header(2, static_cast<uint16_t>(MsgType::kHello), 7) + "{}");
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_FALSE(d.error().empty());
}

TEST(AgentProtocol, TypeZeroIsAnError) {
  FrameDecoder d;
  d.Feed(Header(0, 0));
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_FALSE(d.error().empty());
}

TEST(AgentProtocol, ErrorAfterGoodFramesKeepsTheGoodOnes) {
  FrameDecoder d;
  d.Feed(EncodeFrame(MsgType::kPing, "") + Header(0, 1, 1));
  auto f = d.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type, MsgType::kPing);
  EXPECT_FALSE(d.Next().has_value());
  EXPECT_FALSE(d.error().empty());
}

TEST(AgentProtocol, UnknownTypeIsDecodedNotRejected) {
  // Forward compatibility: the receiver ignores types it does not know.
  FrameDecoder d;
  d.Feed(Header(3, 999) + "abc" + EncodeFrame(MsgType::kPing, ""));
  auto f = d.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(static_cast<uint16_t>(f->type), 999);
  EXPECT_EQ(f->payload, "abc");
  auto g = d.Next();
  ASSERT_TRUE(g.has_value());
  EXPECT_EQ(g->type, MsgType::kPing);
}

TEST(AgentProtocol, ManyFramesKeepBufferBounded) {
  // Exercises the decoder's compaction: 10k frames of 100 bytes each.
  std::string one = EncodeFrame(MsgType::kStdout, std::string(100, 'q'));
  FrameDecoder d;
  size_t decoded = 0;
  for (int i = 0; i < 10000; ++i) {
    d.Feed(one);
    while (auto f = d.Next()) {
      ASSERT_EQ(f->payload.size(), 100u);
      ++decoded;
    }
    ASSERT_LT(d.buffered(), 200000u);
  }
  EXPECT_EQ(decoded, 10000u);
}

TEST(AgentProtocol, MsgTypeNames) {
  EXPECT_STREQ(MsgTypeName(MsgType::kHello), "hello");
  EXPECT_STREQ(MsgTypeName(MsgType::kExit), "exit");
  EXPECT_STREQ(MsgTypeName(MsgType::kError), "error");
  EXPECT_STREQ(MsgTypeName(static_cast<MsgType>(999)), "unknown");
}

TEST(AgentProtocol, HelloRoundTrip) {
  HelloMsg h;
  h.agent_version = "0.1.0+proto1";
  h.boot_ms = 2345;
  h.kernel = "6.1.0-56-cloud-amd64";
  FrameDecoder d;
  d.Feed(EncodeJsonFrame(MsgType::kHello, nlohmann::json(h)));
  auto f = d.Next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->type, MsgType::kHello);
  auto back = ParseBody<HelloMsg>(f->payload);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->protocol, kProtocolVersion);
  EXPECT_EQ(back->agent_version, h.agent_version);
  EXPECT_EQ(back->boot_ms, 2345);
  EXPECT_EQ(back->kernel, h.kernel);

  // The host's Hello carries only the protocol.
  auto host = ParseBody<HelloMsg>("{\"protocol\":1}");
  ASSERT_TRUE(host.has_value());
  EXPECT_EQ(host->protocol, 1u);
  EXPECT_TRUE(host->agent_version.empty());
}

TEST(AgentProtocol, ExecRoundTripAndDefaults) {
  ExecMsg e;
  e.argv = {"sh", "-c", "echo \"hi\" \u00e9"};
  e.env = {{"FOO", "bar"}, {"EMPTY", ""}};
  e.cwd = "/srv";
  e.timeout_ms = 1500;
  e.has_stdin = true;
  auto back = ParseBody<ExecMsg>(nlohmann::json(e).dump());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->argv, e.argv);
  EXPECT_EQ(back->env, e.env);
  EXPECT_EQ(back->cwd, "/srv");
  EXPECT_EQ(back->timeout_ms, 1500);
  EXPECT_TRUE(back->has_stdin);

  auto minimal = ParseBody<ExecMsg>("{\"argv\":[\"true\"]}");
  ASSERT_TRUE(minimal.has_value());
  EXPECT_EQ(minimal->argv, std::vector<std::string>{"true"});
  EXPECT_TRUE(minimal->env.empty());
  EXPECT_EQ(minimal->cwd, "/");
  EXPECT_EQ(minimal->timeout_ms, 0);
  EXPECT_FALSE(minimal->has_stdin);
}

TEST(AgentProtocol, ExitRoundTrip) {
  ExitMsg x;
  x.exit_code = 137;
  x.signal = 9;
  x.duration_ms = 1001;
  x.timed_out = true;
  auto back = ParseBody<ExitMsg>(nlohmann::json(x).dump());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->exit_code, 137);
  EXPECT_EQ(back->signal, 9);
  EXPECT_EQ(back->duration_ms, 1001);
  EXPECT_TRUE(back->timed_out);
  EXPECT_TRUE(back->error_code.empty());

  ExitMsg err;
  err.error_code = kErrEntrypointNotFound;
  err.error = "entrypoint 'nope' not found in the image (PATH=/bin)";
  auto back2 = ParseBody<ExitMsg>(nlohmann::json(err).dump());
  ASSERT_TRUE(back2.has_value());
  EXPECT_EQ(back2->exit_code, -1);
  EXPECT_EQ(back2->error_code, "entrypoint_not_found");
  EXPECT_EQ(back2->error, err.error);
}

TEST(AgentProtocol, KillAndErrorRoundTrip) {
  auto k = ParseBody<KillMsg>(nlohmann::json(KillMsg{15}).dump());
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->signal, 15);
  auto kd = ParseBody<KillMsg>("{}");
  ASSERT_TRUE(kd.has_value());
  EXPECT_EQ(kd->signal, 9);

  auto e = ParseBody<ErrorMsg>(nlohmann::json(ErrorMsg{kErrBusy, "already running"}).dump());
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->code, "busy");
  EXPECT_EQ(e->message, "already running");
}

TEST(AgentProtocol, NetUpAndNetReadyRoundTripAndStayCompatible) {
  auto up = ParseBody<NetUpMsg>(nlohmann::json(NetUpMsg{"52:54:00:aa:bb:cc", 5000}).dump());
  ASSERT_TRUE(up.has_value());
  EXPECT_EQ(up->mac, "52:54:00:aa:bb:cc");
  EXPECT_EQ(up->timeout_ms, 5000);

  NetReadyMsg ready;
  ready.interface = "eth0";
  ready.mac = "52:54:00:aa:bb:cc";
  ready.ip = "10.240.0.17";
  ready.prefix_length = 24;
  ready.previous_mac = "52:54:00:11:22:33";  // a clone: the agent set the new MAC
  auto back = ParseBody<NetReadyMsg>(nlohmann::json(ready).dump());
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->previous_mac, "52:54:00:11:22:33");
  EXPECT_EQ(back->ip, "10.240.0.17");
  // An agent that kept its MAC leaves the field out: older hosts see the old message.
  ready.previous_mac.clear();
  EXPECT_FALSE(nlohmann::json(ready).contains("previous_mac"));
  // An older agent's NetReady (no previous_mac) still parses.
  auto old = ParseBody<NetReadyMsg>(R"({"interface":"eth0","mac":"m","ip":"10.0.0.2","prefix_length":24})");
  ASSERT_TRUE(old.has_value());
  EXPECT_EQ(old->previous_mac, "");
  EXPECT_EQ(old->prefix_length, 24);
}

TEST(AgentProtocol, MalformedBodiesAreRejected) {
  EXPECT_FALSE(ParseBody<ExecMsg>("not json").has_value());
  EXPECT_FALSE(ParseBody<ExecMsg>("{}").has_value());                    // argv is required
  EXPECT_FALSE(ParseBody<ExecMsg>("{\"argv\":\"ls\"}").has_value());     // wrong type
  EXPECT_FALSE(ParseBody<ExecMsg>("{\"argv\":[\"ls\"],\"timeout_ms\":\"x\"}").has_value());
  EXPECT_FALSE(ParseBody<HelloMsg>("{}").has_value());                   // protocol is required
  EXPECT_FALSE(ParseBody<ExitMsg>("{\"signal\":0}").has_value());        // exit_code is required
  EXPECT_FALSE(ParseBody<ExitMsg>("").has_value());
}

TEST(AgentProtocol, UnknownJsonFieldsAreIgnored) {
  auto h = ParseBody<HelloMsg>("{\"protocol\":1,\"future\":{\"x\":1}}");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->protocol, 1u);
}

}  // namespace
}  // namespace berth::agent
