// Qt wrapper smoke test (offscreen): moc output links, signals connect, QtTest runs.
#include <QtTest>

#include "third_party/smoke/qt_smoke_suite.h"

QTEST_GUILESS_MAIN(QtSmokeTest)
