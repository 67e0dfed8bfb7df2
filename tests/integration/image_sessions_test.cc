// Resumable image uploads, tags, delete-in-use and image GC against a real
// berthd over HTTP (curl for the PATCH/Content-Range requests).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/sha256.h"
#include "tests/integration/support/harness.h"

namespace berth::testing {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

struct CurlResult {
  long status = 0;
  std::string headers, body;
  json Json() const { return json::parse(body, nullptr, false); }
  std::string Header(const std::string& name) const {
    std::string lower;
    for (char c : headers) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto at = lower.rfind(name + ":");
    if (at == std::string::npos) return "";
    auto end = headers.find('\r', at);
    std::string v = headers.substr(at + name.size() + 1, end - at - name.size() - 1);
    while (!v.empty() && v.front() == ' ') v.erase(0, 1);
    return v;
  }
};

// One request with curl: `data_file` (may be "") as the body, sent from byte
// `from` for `length` bytes (0: to the end).
CurlResult Curl(const BerthdProcess& d, const std::string& method, const std::string& path,
                const std::vector<std::string>& headers = {}, const std::string& data_file = "", uint64_t from = 0,
                uint64_t length = 0) {
  static int n = 0;
  std::string dir = d.data_dir() + "/../curl-" + std::to_string(::getpid()) + "-" + std::to_string(n++);
  fs::create_directories(dir);
  std::string body_file = dir + "/body", hdr_file = dir + "/hdr", part = dir + "/part";
  std::string cmd = "curl -s -o " + body_file + " -D " + hdr_file + " -w '%{http_code}' -X " + method +
                    " -H 'Authorization: Bearer " + d.admin_token() + "'";
  for (const auto& h : headers) cmd += " -H '" + h + "'";
  if (!data_file.empty()) {
    std::string src = data_file;
    if (from > 0 || length > 0) {
      std::string count = length ? " count=" + std::to_string(length) : "";
      Shell("dd if=" + data_file + " of=" + part + " bs=1M skip=" + std::to_string(from) + count +
            " iflag=skip_bytes,count_bytes status=none");
      src = part;
    }
    cmd += " -H 'Content-Type: application/octet-stream' --data-binary @" + src;
  }
  cmd += " '" + d.base_url() + path + "'";
  CurlResult r;
  r.status = std::atol(Shell(cmd).c_str());
  std::ifstream b(body_file), h(hdr_file);
  r.body.assign(std::istreambuf_iterator<char>(b), {});
  r.headers.assign(std::istreambuf_iterator<char>(h), {});
  fs::remove_all(dir);
  return r;
}

std::string Digest(const std::string& path) { return "sha256:" + *Sha256::HexOfFile(path); }

std::vector<std::string> UploadDirFiles(const BerthdProcess& d) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(d.data_dir() + "/images/uploads", ec)) {
    out.push_back(e.path().filename().string());
  }
  return out;
}

bool ImageListed(const BerthdProcess& d, const std::string& id) {
  for (const auto& m : d.Get("/v1/images").json().value("images", json::array())) {
    if (m.value("id", "") == id) return true;
  }
  return false;
}

class ImageSessionsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // GC every 300 ms; sessions idle 2 s and unreferenced images older than 4 s go.
    daemon_ = new BerthdProcess({"--image-gc-interval-ms", "300", "--upload-session-grace-ms", "2000",
                                 "--image-gc-grace-ms", "4000"});
    ASSERT_TRUE(daemon_->running()) << "berthd did not start:\n" << daemon_->log();
    image_ = BusyboxImagePath();
    size_ = fs::file_size(image_);
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }

  static std::string StartSession(const std::string& query = "") {
    auto r = Curl(*daemon_, "POST", "/v1/images/uploads" + query);
    EXPECT_EQ(r.status, 202) << r.body;
    EXPECT_EQ(r.Header("location"), "/v1/images/uploads/" + r.Json().value("id", ""));
    return r.Json().value("id", "");
  }
  static CurlResult Patch(const std::string& id, uint64_t from, uint64_t length) {
    return Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id,
                {"Content-Range: " + std::to_string(from) + "-" + std::to_string(from + length - 1)}, image_, from,
                length);
  }

  static BerthdProcess* daemon_;
  static std::string image_;
  static uint64_t size_;
};

BerthdProcess* ImageSessionsTest::daemon_ = nullptr;
std::string ImageSessionsTest::image_;
uint64_t ImageSessionsTest::size_ = 0;

TEST_F(ImageSessionsTest, ChunkedSessionGivesThePlainUploadsDigest) {
  const std::string id = StartSession("?name=chunked:v1");
  ASSERT_FALSE(id.empty());
  const uint64_t third = size_ / 3;
  auto p1 = Patch(id, 0, third);
  ASSERT_EQ(p1.status, 202) << p1.body;
  EXPECT_EQ(p1.Json().value("offset", uint64_t{0}), third);
  EXPECT_EQ(p1.Header("range"), "0-" + std::to_string(third - 1));
  // Wrong offset: 416 with the current offset.
  auto gap = Patch(id, third + 512, 512);
  EXPECT_EQ(gap.status, 416) << gap.body;
  EXPECT_EQ(gap.Json().value("offset", uint64_t{0}), third) << gap.body;
  EXPECT_EQ(gap.Header("range"), "0-" + std::to_string(third - 1));
  ASSERT_EQ(Patch(id, third, third).status, 202);
  auto head = Curl(*daemon_, "GET", "/v1/images/uploads/" + id);
  EXPECT_EQ(head.Json().value("offset", uint64_t{0}), 2 * third);
  // The last bytes ride on the finishing PUT.
  auto put = Curl(*daemon_, "PUT", "/v1/images/uploads/" + id + "?digest=" + Digest(image_), {}, image_, 2 * third,
                  size_ - 2 * third);
  ASSERT_EQ(put.status, 201) << put.body;
  EXPECT_EQ("sha256:" + put.Json().value("id", ""), Digest(image_));
  EXPECT_EQ(put.Header("docker-content-digest"), Digest(image_));
  auto byref = daemon_->Get("/v1/images/chunked:v1");
  ASSERT_EQ(byref.status, 200) << byref.body;
  EXPECT_EQ(byref.json()["tags"], json::array({"chunked:v1"}));
  EXPECT_EQ(Curl(*daemon_, "GET", "/v1/images/uploads/" + id).status, 404);
}

TEST_F(ImageSessionsTest, BodyLengthMustMatchTheContentRangesEnd) {
  const std::string id = StartSession();
  ASSERT_FALSE(id.empty());
  auto offset = [&] { return Curl(*daemon_, "GET", "/v1/images/uploads/" + id).Json().value("offset", uint64_t{9}); };
  // Content-Length disagrees with the range: refused before a byte is written.
  auto shortbody = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id, {"Content-Range: 0-99"}, image_, 0, 50);
  EXPECT_EQ(shortbody.status, 400) << shortbody.body;
  EXPECT_EQ(shortbody.Json()["error"].value("field", ""), "Content-Range") << shortbody.body;
  EXPECT_EQ(offset(), 0u);
  auto longbody = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id, {"Content-Range: 0-99"}, image_, 0, 150);
  EXPECT_EQ(longbody.status, 400) << longbody.body;
  EXPECT_EQ(longbody.Json()["error"].value("field", ""), "Content-Range");
  EXPECT_EQ(offset(), 0u);
  // An end before the start.
  auto backwards = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id, {"Content-Range: 10-5"}, image_, 0, 6);
  EXPECT_EQ(backwards.status, 400) << backwards.body;
  EXPECT_EQ(backwards.Json()["error"].value("field", ""), "Content-Range");
  // Chunked bodies have no length up front: too many bytes are refused at the
  // announced end, too few answer 400 with what the session now holds.
  auto chunked_long = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id,
                           {"Content-Range: 0-99", "Transfer-Encoding: chunked"}, image_, 0, 300000);
  EXPECT_EQ(chunked_long.status, 400) << chunked_long.body;
  EXPECT_EQ(chunked_long.Json()["error"].value("field", ""), "Content-Range");
  EXPECT_LE(offset(), 100u);
  const uint64_t at = offset();
  auto chunked_short = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id,
                            {"Content-Range: " + std::to_string(at) + "-" + std::to_string(at + 999),
                             "Transfer-Encoding: chunked"},
                            image_, at, 400);
  EXPECT_EQ(chunked_short.status, 400) << chunked_short.body;
  EXPECT_EQ(chunked_short.Json()["error"].value("field", ""), "Content-Range");
  EXPECT_EQ(chunked_short.Json().value("offset", uint64_t{0}), at + 400) << chunked_short.body;
  EXPECT_EQ(offset(), at + 400);
  // The session goes on from there and finishes with the image's digest.
  auto rest = Curl(*daemon_, "PATCH", "/v1/images/uploads/" + id,
                   {"Content-Range: " + std::to_string(at + 400) + "-" + std::to_string(size_ - 1)}, image_, at + 400,
                   size_ - at - 400);
  ASSERT_EQ(rest.status, 202) << rest.body;
  auto put = Curl(*daemon_, "PUT", "/v1/images/uploads/" + id + "?digest=" + Digest(image_));
  ASSERT_EQ(put.status, 201) << put.body;
}

TEST_F(ImageSessionsTest, ResumesAcrossABerthdRestart) {
  const std::string id = StartSession();
  const uint64_t half = size_ / 2;
  ASSERT_EQ(Patch(id, 0, half).status, 202);
  daemon_->Kill();  // a crash: nothing is cleaned up
  ASSERT_TRUE(daemon_->Start()) << daemon_->log();
  auto head = Curl(*daemon_, "HEAD", "/v1/images/uploads/" + id);
  EXPECT_EQ(head.status, 204);
  EXPECT_EQ(head.Header("range"), "0-" + std::to_string(half - 1));
  ASSERT_EQ(Patch(id, half, size_ - half).status, 202);
  auto put = Curl(*daemon_, "PUT", "/v1/images/uploads/" + id + "?digest=" + Digest(image_));
  ASSERT_EQ(put.status, 201) << put.body;
  EXPECT_EQ("sha256:" + put.Json().value("id", ""), Digest(image_));
}

TEST_F(ImageSessionsTest, WrongDigestIsRejectedNamingDigest) {
  const std::string id = StartSession();
  ASSERT_EQ(Patch(id, 0, size_).status, 202);
  auto put = Curl(*daemon_, "PUT", "/v1/images/uploads/" + id + "?digest=sha256:" + std::string(64, 'a'));
  EXPECT_EQ(put.status, 400) << put.body;
  EXPECT_EQ(put.Json()["error"].value("field", ""), "digest") << put.body;
  auto missing = Curl(*daemon_, "PUT", "/v1/images/uploads/" + id);
  EXPECT_EQ(missing.status, 400);
  EXPECT_EQ(missing.Json()["error"].value("field", ""), "digest");
  EXPECT_EQ(Curl(*daemon_, "DELETE", "/v1/images/uploads/" + id).status, 200);
  EXPECT_EQ(Curl(*daemon_, "GET", "/v1/images/uploads/" + id).status, 404);
}

TEST_F(ImageSessionsTest, InterruptedUploadLeavesNoImageAndGcRemovesItsPart) {
  // A plain upload cut off mid-body and an abandoned session.
  std::string cut = daemon_->data_dir() + "/../cut.img";
  Shell("head -c " + std::to_string(size_ / 2) + " " + image_ + " > " + cut);
  const std::string id = StartSession();
  ASSERT_EQ(Patch(id, 0, size_ / 2).status, 202);
  EXPECT_FALSE(UploadDirFiles(*daemon_).empty());
  // Idle past the grace: GC takes the session and its .part.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!UploadDirFiles(*daemon_).empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(UploadDirFiles(*daemon_).empty());
  EXPECT_EQ(Curl(*daemon_, "GET", "/v1/images/uploads/" + id).status, 404);
  // The cut-off bytes are no image: nothing is listed under their digest.
  EXPECT_FALSE(ImageListed(*daemon_, *Sha256::HexOfFile(cut)));
  fs::remove(cut);
}

TEST_F(ImageSessionsTest, TagsListInspectAndUntag) {
  auto up = Curl(*daemon_, "POST", "/v1/images?name=tagged:1", {}, image_);
  ASSERT_EQ(up.status, 201) << up.body;
  const std::string id = up.Json().value("id", "");
  auto tag = daemon_->Post("/v1/images/tagged:1/tags", json{{"tag", "tagged:stable"}}.dump());
  ASSERT_EQ(tag.status, 201) << tag.body;
  // The same bytes may carry other tests' tags too.
  const std::string tag_list = tag.json()["tags"].dump();
  EXPECT_NE(tag_list.find("\"tagged:1\""), std::string::npos) << tag.body;
  EXPECT_NE(tag_list.find("\"tagged:stable\""), std::string::npos) << tag.body;
  EXPECT_EQ(daemon_->Post("/v1/images/" + id + "/tags", json{{"tag", "Bad Name"}}.dump()).status, 400);
  auto tags = daemon_->Get("/v1/images/tags").json()["tags"];
  int mine = 0;
  for (const auto& t : tags) mine += t.value("id", "") == id && t.value("name", "") == "tagged";
  EXPECT_EQ(mine, 2) << tags.dump();
  auto inspect = daemon_->Get("/v1/images/tagged:stable").json();
  EXPECT_EQ(inspect.value("id", ""), id);
  EXPECT_EQ(inspect.value("digest", ""), "sha256:" + id);
  EXPECT_TRUE(inspect["referenced_by"]["functions"].empty());
  EXPECT_EQ(daemon_->Get("/v1/images/sha256:" + id).status, 200);
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/images/tagged:1").status, 200);
  EXPECT_EQ(daemon_->Get("/v1/images/tagged:1").status, 404);
  EXPECT_EQ(daemon_->Get("/v1/images/tagged:stable").status, 200);
}

TEST_F(ImageSessionsTest, DeleteIsRefusedWhileAFunctionOrARunningExecutionUsesIt) {
  auto up = Curl(*daemon_, "POST", "/v1/images?name=inuse", {}, image_);
  ASSERT_EQ(up.status, 201) << up.body;
  const std::string id = up.Json().value("id", "");
  ASSERT_EQ(daemon_->CreateFunction("uses-image", id, json::object()).status, 201);
  auto del = daemon_->Call("DELETE", "/v1/images/" + id);
  EXPECT_EQ(del.status, 409) << del.body;
  EXPECT_EQ(daemon_->Get("/v1/images/" + id).json()["referenced_by"]["functions"], json::array({"uses-image"}));
  ASSERT_EQ(daemon_->Call("DELETE", "/v1/functions/uses-image").status, 200);

  auto proc = daemon_->Post("/v1/procs", json{{"image", id}, {"name", "holder"}}.dump());
  ASSERT_EQ(proc.status, 201) << proc.body;
  const int64_t pid = proc.json().value("pid", int64_t{0});
  auto busy = daemon_->Call("DELETE", "/v1/images/" + id);
  EXPECT_EQ(busy.status, 409) << busy.body;
  EXPECT_FALSE(daemon_->Get("/v1/images/" + id).json()["referenced_by"]["executions"].empty());
  daemon_->Post("/v1/procs/" + std::to_string(pid) + "/kill", json{{"signal", "KILL"}}.dump());
  daemon_->Get("/v1/procs/" + std::to_string(pid) + "/wait?timeout_ms=60000");
  EXPECT_EQ(daemon_->Call("DELETE", "/v1/images/" + id).status, 200);
}

TEST_F(ImageSessionsTest, GcCollectsUntaggedImagesAfterTheGrace) {
  // A distinct image (different bytes) so no other test's record holds it.
  std::string copy = daemon_->data_dir() + "/../gc.ext4";
  Shell("mke2fs -q -t ext4 -F " + copy + " 3M");
  auto up = Curl(*daemon_, "POST", "/v1/images", {}, copy);
  ASSERT_EQ(up.status, 201) << up.body;
  const std::string id = up.Json().value("id", "");
  auto kept = Curl(*daemon_, "POST", "/v1/images?name=gc-kept", {}, image_);
  ASSERT_EQ(kept.status, 201);
  EXPECT_TRUE(ImageListed(*daemon_, id));  // within the grace
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const std::string blob = daemon_->data_dir() + "/images/" + id + ".raw";
  // One GC pass drops the record, then the file: wait for both.
  while ((ImageListed(*daemon_, id) || fs::exists(blob)) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_FALSE(ImageListed(*daemon_, id));
  EXPECT_FALSE(fs::exists(blob));
  EXPECT_TRUE(ImageListed(*daemon_, kept.Json().value("id", "")));  // tagged: stays
  fs::remove(copy);
}

}  // namespace
}  // namespace berth::testing

namespace berth::testing {
namespace {

// `berth image push` continues a session an interrupted push left (its id in
// the CLI's state folder) instead of starting over, and `berth image tag`.
TEST_F(ImageSessionsTest, CliPushResumesAnInterruptedUploadAndTags) {
  const std::string berth = std::string(BERTH_BINARY_DIR) + "/cli/berth";
  ASSERT_TRUE(fs::exists(berth)) << berth;
  const std::string cache = daemon_->data_dir() + "/../cli-cache";
  const std::string sha = *Sha256::HexOfFile(image_);
  // An earlier push that got a third of the way.
  const std::string id = StartSession("?name=cli-pushed:1");
  const uint64_t third = size_ / 3;
  ASSERT_EQ(Patch(id, 0, third).status, 202);
  fs::create_directories(cache + "/berth/uploads");
  std::ofstream(cache + "/berth/uploads/" + sha + ".json")
      << json{{"api", daemon_->base_url()}, {"id", id}, {"file", image_}}.dump();
  const std::string env = "XDG_CACHE_HOME=" + cache + " BERTH_URL=" + daemon_->base_url() +
                          " BERTH_TOKEN=" + daemon_->admin_token() + " ";
  int code = -1;
  std::string out = Shell(env + berth + " image push --no-progress --name cli-pushed:1 " + image_ + " 2>&1", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_NE(out.find("resuming upload session " + id + " at byte " + std::to_string(third)), std::string::npos)
      << out;
  EXPECT_NE(out.find(sha), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(cache + "/berth/uploads/" + sha + ".json")) << "state kept after success";
  EXPECT_EQ(daemon_->Get("/v1/images/cli-pushed:1").json().value("id", ""), sha);

  out = Shell(env + berth + " image tag cli-pushed:1 cli-pushed:prod 2>&1", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(daemon_->Get("/v1/images/cli-pushed:prod").json().value("id", ""), sha);
  fs::remove_all(cache);
}

}  // namespace
}  // namespace berth::testing
