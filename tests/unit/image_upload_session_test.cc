// UploadSessions: contiguous ranges, resume across a new instance (a berthd
// restart), digest checks, abort, tenancy and GC of stale sessions.
#include "images/upload_session.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "tests/support/temp_dir.h"

namespace berth::images {
namespace {

namespace fs = std::filesystem;
using ::berth::testing::TempDir;

class UploadSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = tmp_.path() + "/root.ext4";
    auto r = Env::Default()->Run({"mke2fs", "-q", "-t", "ext4", "-F", src_, "4M"});
    ASSERT_TRUE(r.ok() && r->exit_code == 0);
    content_ = *Env::Default()->ReadFile(src_);
    digest_ = "sha256:" + Sha256::HexOf(content_);
    store_ = std::make_unique<ImageStore>(Env::Default(), tmp_.path() + "/store");
    sessions_ = std::make_unique<UploadSessions>(Env::Default(), store_.get(), 64u << 20);
  }

  Status Put(const std::string& id, uint64_t offset, std::string_view bytes, uint64_t* current = nullptr) {
    uint64_t cur = 0;
    auto w = sessions_->Append("t", id, offset, &cur);
    if (current) *current = cur;
    if (!w.ok()) return w.status();
    BERTH_RETURN_IF_ERROR((*w)->Append(bytes));
    return (*w)->Close().status();
  }

  std::vector<std::string> UploadFiles() {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(sessions_->dir(), ec)) out.push_back(e.path().filename().string());
    return out;
  }

  TempDir tmp_;
  std::string src_, content_, digest_;
  std::unique_ptr<ImageStore> store_;
  std::unique_ptr<UploadSessions> sessions_;
};

TEST_F(UploadSessionTest, ContiguousRangesThenFinishStoresTheImage) {
  auto s = sessions_->Start("t", "base:1", "raw");
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->offset, 0u);
  const size_t half = content_.size() / 2;
  ASSERT_TRUE(Put(s->id, 0, std::string_view(content_).substr(0, half)).ok());
  EXPECT_EQ(sessions_->Get("t", s->id)->offset, half);
  // A range that does not start at the offset is refused with the offset.
  uint64_t current = 0;
  Status gap = Put(s->id, half + 10, "x", &current);
  EXPECT_EQ(gap.code(), Code::kFailedPrecondition);
  EXPECT_EQ(gap.field(), "Content-Range");
  EXPECT_EQ(current, half);
  ASSERT_TRUE(Put(s->id, half, std::string_view(content_).substr(half)).ok());
  auto rec = sessions_->Finish("t", s->id, digest_, {});
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ("sha256:" + rec->id, digest_);
  EXPECT_EQ(rec->format, "raw");
  EXPECT_TRUE(UploadFiles().empty());
  EXPECT_EQ(sessions_->Get("t", s->id).status().code(), Code::kNotFound);
}

TEST_F(UploadSessionTest, ResumesAfterRestartWithTheSameDigest) {
  auto s = sessions_->Start("t", "", "");
  ASSERT_TRUE(s.ok());
  const size_t third = content_.size() / 3;
  ASSERT_TRUE(Put(s->id, 0, std::string_view(content_).substr(0, third)).ok());
  // A new process: nothing in memory, the session is on disk.
  sessions_.reset();
  store_.reset();  // the next store clears tmp/, not uploads/
  store_ = std::make_unique<ImageStore>(Env::Default(), tmp_.path() + "/store");
  sessions_ = std::make_unique<UploadSessions>(Env::Default(), store_.get(), 64u << 20);
  auto again = sessions_->Get("t", s->id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->offset, third);
  ASSERT_TRUE(Put(s->id, third, std::string_view(content_).substr(third)).ok());
  auto rec = sessions_->Finish("t", s->id, digest_, {});
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
  EXPECT_EQ(rec->id, Sha256::HexOf(content_));
}

TEST_F(UploadSessionTest, WrongDigestIsRefusedAndKeepsTheSession) {
  auto s = sessions_->Start("t", "", "");
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(Put(s->id, 0, content_).ok());
  auto bad = sessions_->Finish("t", s->id, "sha256:" + std::string(64, '0'), {});
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(bad.status().field(), "digest");
  auto malformed = sessions_->Finish("t", s->id, "md5:abc", {});
  EXPECT_EQ(malformed.status().field(), "digest");
  EXPECT_TRUE(store_->List().empty());
  // The in-memory hash was consumed: the retry re-hashes the .part.
  auto rec = sessions_->Finish("t", s->id, digest_, {});
  ASSERT_TRUE(rec.ok()) << rec.status().ToString();
}

TEST_F(UploadSessionTest, OtherTenantsCannotSeeOrTouchASession) {
  auto s = sessions_->Start("t", "", "");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(sessions_->Get("u", s->id).status().code(), Code::kNotFound);
  uint64_t cur = 0;
  EXPECT_EQ(sessions_->Append("u", s->id, 0, &cur).status().code(), Code::kNotFound);
  EXPECT_EQ(sessions_->Abort("u", s->id).code(), Code::kNotFound);
  EXPECT_EQ(sessions_->Get("t", "../../etc/passwd").status().code(), Code::kNotFound);
}

TEST_F(UploadSessionTest, OneWriterAtATime) {
  auto s = sessions_->Start("t", "", "");
  ASSERT_TRUE(s.ok());
  uint64_t cur = 0;
  auto w1 = sessions_->Append("t", s->id, 0, &cur);
  ASSERT_TRUE(w1.ok());
  EXPECT_EQ(sessions_->Append("t", s->id, 0, &cur).status().code(), Code::kAborted);
  EXPECT_EQ(sessions_->Finish("t", s->id, digest_, {}).status().code(), Code::kAborted);
  w1->reset();
  EXPECT_TRUE(sessions_->Append("t", s->id, 0, &cur).ok());
}

TEST_F(UploadSessionTest, AbortAndStaleCollectionLeaveNoPart) {
  auto a = sessions_->Start("t", "", "");
  auto b = sessions_->Start("t", "", "");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(Put(a->id, 0, "abc").ok());
  ASSERT_TRUE(sessions_->Abort("t", a->id).ok());
  EXPECT_EQ(UploadFiles().size(), 2u);  // b's .part and .json
  // Not idle long enough: kept.
  EXPECT_EQ(sessions_->CollectStale(Env::Default()->NowUnixMs() - 60'000), 0u);
  EXPECT_EQ(sessions_->CollectStale(Env::Default()->NowUnixMs() + 1000), 1u);
  EXPECT_TRUE(UploadFiles().empty());
}

TEST_F(UploadSessionTest, SizeLimitHolds) {
  sessions_ = std::make_unique<UploadSessions>(Env::Default(), store_.get(), 10);
  auto s = sessions_->Start("t", "", "");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(Put(s->id, 0, std::string(11, 'x')).code(), Code::kResourceExhausted);
}

}  // namespace
}  // namespace berth::images
