// main() for headless Qt model tests: a QCoreApplication, then every gtest test.
#include <QCoreApplication>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  QCoreApplication app(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
