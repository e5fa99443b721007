#include "gui/views/daemon_panel.h"
#include "daemon/api.h"

#include <QDir>
#include <QFile>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QJsonDocument>
#include <QJsonObject>
#include <QLabel>
#include <QLineEdit>
#include <QNetworkAccessManager>
#include <QNetworkReply>
#include <QNetworkRequest>
#include <QPushButton>
#include <QSplitter>
#include <QTableWidget>
#include <QTimer>
#include <QVBoxLayout>

#include "gui/views/format_util.h"

namespace safeshard::gui {
namespace {

QTableWidget* MakeTable(QWidget* parent, const QStringList& headers) {
  auto* t = new QTableWidget(0, headers.size(), parent);
  t->setHorizontalHeaderLabels(headers);
  t->setSelectionBehavior(QAbstractItemView::SelectRows);
  t->setSelectionMode(QAbstractItemView::SingleSelection);
  t->setEditTriggers(QAbstractItemView::NoEditTriggers);
  t->verticalHeader()->setVisible(false);
  t->horizontalHeader()->setStretchLastSection(true);
  t->setWordWrap(false);  // one line per run or job, elided; the tooltip has the whole text
  t->setTextElideMode(Qt::ElideMiddle);
  return t;
}

QColor StateColor(const QString& s) {
  if (s == "published") return QColor(0x2e7d32);
  if (s == "failed" || s == "parked") return QColor(0xb00020);
  if (s == "running" || s == "verifying" || s == "queued") return QColor(0x1565c0);
  return QColor(0x6d6d6d);
}

}  // namespace

DaemonPanel::DaemonPanel(QWidget* parent) : QWidget(parent) {
  net_ = new QNetworkAccessManager(this);
  auto* l = new QVBoxLayout(this);
  auto* form = new QFormLayout;
  address_edit = new QLineEdit(
      QString("http://%1:%2").arg(daemon::api::kDefaultAddress).arg(daemon::api::kDefaultPort),
      this);
  address_edit->setToolTip("The daemon's API address (config \"api\": address and port)");
  token_file_edit =
      new QLineEdit(QString::fromStdString(daemon::api::DefaultClientTokenFile()), this);
  token_file_edit->setToolTip(
      "File holding the bearer token (needed to consolidate, retry or cancel)");
  connect_button = new QPushButton("Connect", this);
  auto* row = new QHBoxLayout;
  row->addWidget(address_edit, 1);
  row->addWidget(connect_button);
  form->addRow("Daemon:", row);
  form->addRow("Token file:", token_file_edit);
  l->addLayout(form);
  status_ = new QLabel("Not connected.", this);
  status_->setWordWrap(true);
  l->addWidget(status_);

  // Side by side: in a dock along the bottom, each table gets the whole height (stacked, each
  // showed about two rows).
  auto* split = new QSplitter(Qt::Horizontal, this);
  runs_table = MakeTable(split, {"Path", "State", "Output", "Detail", "Detection", "Run ID"});
  jobs_table = MakeTable(split, {"Job", "Run", "Kind", "State", "Progress", "Attempts", "Error"});
  split->addWidget(runs_table);
  split->addWidget(jobs_table);
  l->addWidget(split, 1);
  auto* buttons = new QHBoxLayout;
  consolidate_button = new QPushButton("Consolidate / retry", this);
  consolidate_button->setToolTip(
      "Queue consolidation of the selected run (also retries a failed or parked one)");
  cancel_job_button = new QPushButton("Cancel job", this);
  open_button = new QPushButton("Open", this);
  open_button->setToolTip(
      "Open the selected run's consolidated output (or the run itself) in the inspector");
  buttons->addWidget(consolidate_button);
  buttons->addWidget(cancel_job_button);
  buttons->addStretch();
  buttons->addWidget(open_button);
  l->addLayout(buttons);

  timer_ = new QTimer(this);
  timer_->setInterval(2000);
  connect(timer_, &QTimer::timeout, this, &DaemonPanel::Refresh);
  connect(connect_button, &QPushButton::clicked, this,
          [this] { connected_ ? Disconnect() : Connect(); });
  connect(consolidate_button, &QPushButton::clicked, this, &DaemonPanel::ConsolidateSelected);
  connect(cancel_job_button, &QPushButton::clicked, this, &DaemonPanel::CancelSelectedJob);
  connect(open_button, &QPushButton::clicked, this, &DaemonPanel::OpenSelected);
  connect(runs_table, &QTableWidget::cellDoubleClicked, this, &DaemonPanel::OpenSelected);
}

QString DaemonPanel::status_text() const {
  return status_->text();
}

void DaemonPanel::SetStatus(const QString& text, bool error) {
  status_->setText(text);
  status_->setStyleSheet(error ? "color: #b00020;" : "");
}

void DaemonPanel::Connect() {
  connected_ = true;
  reached_ = false;
  connect_button->setText("Disconnect");
  address_edit->setEnabled(false);
  SetStatus("Connecting…", false);
  Refresh();
  timer_->start();
}

void DaemonPanel::Disconnect() {
  connected_ = false;
  timer_->stop();
  connect_button->setText("Connect");
  address_edit->setEnabled(true);
  SetStatus("Not connected.", false);
}

QNetworkReply* DaemonPanel::Get(const QString& path) {
  QNetworkRequest req(QUrl(address_edit->text().trimmed() + path));
  req.setTransferTimeout(5000);
  return net_->get(req);
}

QNetworkReply* DaemonPanel::Post(const QString& path) {
  QNetworkRequest req(QUrl(address_edit->text().trimmed() + path));
  req.setTransferTimeout(10000);
  req.setHeader(QNetworkRequest::ContentTypeHeader, "application/json");
  QFile f(token_file_edit->text().trimmed());
  if (f.open(QIODevice::ReadOnly)) {
    req.setRawHeader("Authorization", "Bearer " + f.readAll().trimmed());
  }
  return net_->post(req, QByteArray("{}"));
}

QString DaemonPanel::ReplyError(QNetworkReply* reply, const QByteArray& body) const {
  const int code = reply->attribute(QNetworkRequest::HttpStatusCodeAttribute).toInt();
  const QJsonDocument doc = QJsonDocument::fromJson(body);
  QString msg = doc.isObject() ? doc.object().value("error").toString() : QString();
  if (msg.isEmpty()) msg = reply->errorString();
  const QString url = reply->url().toString(QUrl::RemoveUserInfo);
  return code ? QString("%1: HTTP %2: %3").arg(url).arg(code).arg(msg)
              : QString("%1: %2").arg(url, msg);
}

void DaemonPanel::Refresh() {
  if (!connected_ || in_flight_ > 0) return;  // never pile requests up behind a slow daemon
  in_flight_ = 2;
  auto handle = [this](QNetworkReply* reply, bool runs) {
    connect(reply, &QNetworkReply::finished, this, [this, reply, runs] {
      reply->deleteLater();
      --in_flight_;
      const QByteArray body = reply->readAll();
      if (!connected_) return;
      if (reply->error() != QNetworkReply::NoError) {
        const QString why = ReplyError(reply, body);
        if (!reached_) {
          // Never reached: back to "Connect", with why (not a "Disconnect" button for a
          // connection that never was).
          Disconnect();
          SetStatus("Could not connect: " + why, true);
          return;
        }
        SetStatus(why, true);
        return;
      }
      reached_ = true;
      const QJsonObject o = QJsonDocument::fromJson(body).object();
      if (runs) {
        runs_ = o.value("runs").toArray();
        FillRuns();
      } else {
        jobs_ = o.value("jobs").toArray();
        FillJobs();
      }
      if (in_flight_ == 0) {
        SetStatus(QString("Connected to %1 · %2 run(s), %3 job(s)")
                      .arg(address_edit->text().trimmed())
                      .arg(runs_.size())
                      .arg(jobs_.size()),
                  false);
        emit refreshed();
      }
    });
  };
  handle(Get(daemon::api::kRuns), true);
  handle(Get(daemon::api::kJobs), false);
}

void DaemonPanel::FillRuns() {
  const QString keep = SelectedRunId();
  runs_table->setRowCount(runs_.size());
  for (int i = 0; i < runs_.size(); ++i) {
    const QJsonObject r = runs_[i].toObject();
    // The detail in words: a published run's record keeps an internal fingerprint there.
    QString detail = r["detail"].toString();
    if (detail.startsWith("published:")) detail = "published into " + r["output"].toString();
    const QStringList cells = {r["path"].toString(),      r["state"].toString(),
                               r["output"].toString(),    detail,
                               r["detection"].toString(), r["id"].toString()};
    for (int c = 0; c < cells.size(); ++c) {
      auto* item = new QTableWidgetItem(cells[c]);
      item->setToolTip(cells[c]);
      if (c == 1) item->setForeground(StateColor(cells[c]));
      runs_table->setItem(i, c, item);
    }
    if (cells[5] == keep) runs_table->selectRow(i);
  }
}

void DaemonPanel::FillJobs() {
  jobs_table->setRowCount(jobs_.size());
  for (int i = 0; i < jobs_.size(); ++i) {
    const QJsonObject j = jobs_[i].toObject();
    const double done = j["bytes_done"].toDouble(), total = j["bytes_total"].toDouble();
    const QString progress = total > 0 ? QString("%1% of %2")
                                             .arg(100.0 * done / total, 0, 'f', 1)
                                             .arg(HumanBytes(static_cast<uint64_t>(total)))
                                       : QString();
    // The run by its path (its id is in the tooltip).
    QString run = j["run"].toString();
    for (const QJsonValue& rv : runs_) {
      if (rv.toObject()["id"].toString() == run) run = rv.toObject()["path"].toString();
    }
    const QStringList cells = {QString::number(j["id"].toInteger()),
                               run,
                               j["kind"].toString(),
                               j["state"].toString(),
                               progress,
                               QString::number(j["attempts"].toInteger()),
                               j["error"].toString()};
    for (int c = 0; c < cells.size(); ++c) {
      auto* item = new QTableWidgetItem(cells[c]);
      item->setToolTip(cells[c]);
      if (c == 3) item->setForeground(StateColor(cells[c]));
      jobs_table->setItem(i, c, item);
    }
  }
}

QString DaemonPanel::SelectedRunId() const {
  const int r = runs_table->currentRow();
  if (r < 0 || runs_table->item(r, 5) == nullptr) return {};
  return runs_table->item(r, 5)->text();
}

void DaemonPanel::ConsolidateSelected() {
  const QString id = SelectedRunId();
  if (id.isEmpty()) return SetStatus("Select a run first.", true);
  QNetworkReply* reply =
      Post(QString::fromStdString(daemon::api::ConsolidatePath(id.toStdString())));
  connect(reply, &QNetworkReply::finished, this, [this, reply, id] {
    reply->deleteLater();
    const QByteArray body = reply->readAll();
    if (reply->error() != QNetworkReply::NoError) {
      const QString e = ReplyError(reply, body);
      SetStatus(e, true);
      emit actionDone(false, e);
      return;
    }
    const QString msg = QString("Run %1: consolidation queued as job %2")
                            .arg(id)
                            .arg(QJsonDocument::fromJson(body).object().value("job").toInteger());
    SetStatus(msg, false);
    emit actionDone(true, msg);
    Refresh();
  });
}

void DaemonPanel::CancelSelectedJob() {
  const int r = jobs_table->currentRow();
  if (r < 0 || jobs_table->item(r, 0) == nullptr) return SetStatus("Select a job first.", true);
  const QString id = jobs_table->item(r, 0)->text();
  QNetworkReply* reply = Post(QString::fromStdString(daemon::api::CancelPath(id.toLongLong())));
  connect(reply, &QNetworkReply::finished, this, [this, reply, id] {
    reply->deleteLater();
    const QByteArray body = reply->readAll();
    const bool ok = reply->error() == QNetworkReply::NoError;
    const QString msg = ok ? QString("Job %1: cancel requested").arg(id) : ReplyError(reply, body);
    SetStatus(msg, !ok);
    emit actionDone(ok, msg);
  });
}

void DaemonPanel::OpenSelected() {
  const int r = runs_table->currentRow();
  if (r < 0 || r >= runs_.size()) return SetStatus("Select a run first.", true);
  const QJsonObject run = runs_[r].toObject();
  const QString output = run["output"].toString();
  emit openRequested(run["state"].toString() == "published" && !output.isEmpty()
                         ? output
                         : run["path"].toString());
}

}  // namespace safeshard::gui
