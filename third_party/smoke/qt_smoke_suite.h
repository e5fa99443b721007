// The QtTest suite of the Qt smoke test (a Q_OBJECT class, so it goes through moc too).
#ifndef SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_SUITE_H_
#define SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_SUITE_H_

#include <QObject>
#include <QSignalSpy>
#include <QtTest>

#include "third_party/smoke/qt_smoke.h"

class QtSmokeTest : public QObject {
  Q_OBJECT

 private Q_SLOTS:
  void signalsReachConnectedSlots() {
    Counter a, b;
    QObject::connect(&a, &Counter::changed, &b, &Counter::increment);
    QSignalSpy spy(&a, &Counter::changed);
    a.increment();
    QCOMPARE(spy.count(), 1);
    QCOMPARE(b.value(), 1);
  }
};

#endif  // SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_SUITE_H_
