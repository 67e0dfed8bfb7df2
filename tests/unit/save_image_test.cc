// libvirt save image headers: parsing, refusal of corrupt or incomplete
// images, and re-encoding with a different domain XML (in place or grown).
#include <gtest/gtest.h>

#include "hypervisor/save_image.h"

namespace berth::hv {
namespace {

TEST(SaveImageTest, CorruptOrIncompleteImagesAreRefused) {
  std::string bytes = "LibvirtQemudPart" + std::string(200, '\0');
  EXPECT_EQ(ParseSaveImageHeader(bytes).status().code(), Code::kFailedPrecondition);
  EXPECT_EQ(ParseSaveImageHeader("garbage").status().code(), Code::kInvalidArgument);
  std::string wrong = "LibvirtQemudSave" + std::string(76, '\0');
  wrong[16] = 2;
  wrong[20] = 100;  // data_len 100, but no data follows
  EXPECT_EQ(ParseSaveImageHeader(wrong).status().code(), Code::kInvalidArgument);
}

TEST(SaveImageTest, EncodeRoundTripsAndGrowsWhenTheXmlDoesNotFit) {
  SaveImageHeader h;
  h.version = 2;
  h.data_len = 128;
  h.was_running = true;
  h.cookie = "<cookie/>";
  auto small = EncodeSaveImageHeader(h, "<domain>x</domain>");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(small->size(), kSaveHeaderSize + 128);
  auto parsed = ParseSaveImageHeader(*small);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->xml, "<domain>x</domain>");
  EXPECT_EQ(parsed->cookie, "<cookie/>");
  EXPECT_TRUE(parsed->was_running);

  std::string big = "<domain>" + std::string(1000, 'y') + "</domain>";
  auto grown = EncodeSaveImageHeader(h, big);
  ASSERT_TRUE(grown.ok());
  auto reparsed = ParseSaveImageHeader(*grown);
  ASSERT_TRUE(reparsed.ok());
  EXPECT_GT(reparsed->data_len, 1000u);
  EXPECT_EQ(reparsed->xml, big);
  EXPECT_EQ(reparsed->cookie, "<cookie/>");
}

}  // namespace
}  // namespace berth::hv
