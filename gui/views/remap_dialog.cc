#include "gui/views/remap_dialog.h"

#include <QDialogButtonBox>
#include <QDir>
#include <QFutureWatcher>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QIdentityProxyModel>
#include <QLabel>
#include <QLineEdit>
#include <QPushButton>
#include <QSplitter>
#include <QTableView>
#include <QTableWidget>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrent>

#include "core/io/url.h"
#include "core/remap/remap.h"

namespace safeshard::gui {
namespace {

// Colours rows the (QtCore-only) preview model flags as colliding.
class CollisionProxy : public QIdentityProxyModel {
 public:
  using QIdentityProxyModel::QIdentityProxyModel;
  QVariant data(const QModelIndex& index, int role) const override {
    if (role == Qt::BackgroundRole || role == Qt::ForegroundRole) {
      const bool collides =
          QIdentityProxyModel::data(index, RemapPreviewModel::kCollisionRole).toBool();
      if (collides)
        return role == Qt::BackgroundRole ? QVariant(QColor(255, 214, 214))
                                          : QVariant(QColor(140, 0, 0));
    }
    return QIdentityProxyModel::data(index, role);
  }
};

}  // namespace

RemapDialog::RemapDialog(std::shared_ptr<const CheckpointLayout> layout,
                         std::shared_ptr<FileSystem> fs, QWidget* parent)
    : QDialog(parent), layout_(std::move(layout)), fs_(fs) {
  setWindowTitle("Remap keys");
  resize(900, 600);
  auto* l = new QVBoxLayout(this);
  auto* help = new QLabel(
      "Rules apply in order to every key, like Python's <code>re.sub</code> "
      "(<code>\\1</code> for groups). Apply writes a new checkpoint; the input is not touched.",
      this);
  help->setWordWrap(true);
  l->addWidget(help);

  auto* split = new QSplitter(Qt::Vertical, this);
  auto* rules_box = new QWidget(split);
  auto* rl = new QHBoxLayout(rules_box);
  rl->setContentsMargins(0, 0, 0, 0);
  rules_table = new QTableWidget(0, 2, rules_box);
  rules_table->setHorizontalHeaderLabels({"Regex", "Replacement"});
  rules_table->horizontalHeader()->setSectionResizeMode(QHeaderView::Stretch);
  rules_table->verticalHeader()->setVisible(true);
  rl->addWidget(rules_table, 1);
  auto* buttons = new QVBoxLayout;
  auto* add = new QPushButton("Add", rules_box);
  auto* remove = new QPushButton("Remove", rules_box);
  auto* up = new QPushButton("Up", rules_box);
  auto* down = new QPushButton("Down", rules_box);
  for (QPushButton* b : {add, remove, up, down}) buttons->addWidget(b);
  buttons->addStretch();
  rl->addLayout(buttons);

  preview_model = new RemapPreviewModel(this);
  std::vector<std::string> keys;
  for (const TensorLayout& t : layout_->tensors()) keys.push_back(t.name);
  preview_model->SetKeys(std::move(keys));
  auto* proxy = new CollisionProxy(this);
  proxy->setSourceModel(preview_model);
  preview_view = new QTableView(split);
  preview_view->setModel(proxy);
  preview_view->horizontalHeader()->setSectionResizeMode(QHeaderView::Stretch);
  preview_view->verticalHeader()->setVisible(false);
  preview_view->setSelectionBehavior(QAbstractItemView::SelectRows);
  split->addWidget(rules_box);
  split->addWidget(preview_view);
  split->setStretchFactor(1, 3);
  l->addWidget(split, 1);

  status_ = new QLabel(this);
  status_->setWordWrap(true);
  status_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  l->addWidget(status_);
  auto* out = new QHBoxLayout;
  out->addWidget(new QLabel("Output directory:", this));
  output_edit =
      new QLineEdit(UrlScheme(layout_->root()).empty()
                        ? QString::fromStdString(layout_->root()) + "-remapped"
                        : QDir::homePath() + "/" +
                              QString::fromStdString(BaseName(layout_->root())) + "-remapped",
                    this);
  out->addWidget(output_edit, 1);
  l->addLayout(out);
  auto* box = new QDialogButtonBox(this);
  apply_button = box->addButton("Apply", QDialogButtonBox::AcceptRole);
  auto* close = box->addButton(QDialogButtonBox::Close);
  l->addWidget(box);

  connect(add, &QPushButton::clicked, this, [this] {
    const int r = rules_table->rowCount();
    rules_table->insertRow(r);
    rules_table->setItem(r, 0, new QTableWidgetItem(""));
    rules_table->setItem(r, 1, new QTableWidgetItem(""));
    rules_table->setCurrentCell(r, 0);
    rules_table->editItem(rules_table->item(r, 0));
  });
  connect(remove, &QPushButton::clicked, this, [this] {
    if (rules_table->currentRow() >= 0) rules_table->removeRow(rules_table->currentRow());
    UpdatePreview();
  });
  auto move = [this](int delta) {
    const int r = rules_table->currentRow(), to = r + delta;
    if (r < 0 || to < 0 || to >= rules_table->rowCount()) return;
    for (int c = 0; c < 2; ++c) {
      QTableWidgetItem* a = rules_table->takeItem(r, c);
      QTableWidgetItem* b = rules_table->takeItem(to, c);
      rules_table->setItem(r, c, b);
      rules_table->setItem(to, c, a);
    }
    rules_table->setCurrentCell(to, rules_table->currentColumn());
    UpdatePreview();
  };
  connect(up, &QPushButton::clicked, this, [move] { move(-1); });
  connect(down, &QPushButton::clicked, this, [move] { move(1); });
  connect(rules_table, &QTableWidget::itemChanged, this, [this] { UpdatePreview(); });
  connect(output_edit, &QLineEdit::textChanged, this, [this] { UpdatePreview(); });
  connect(apply_button, &QPushButton::clicked, this, [this] { Apply(); });
  connect(close, &QPushButton::clicked, this, &QDialog::reject);
  UpdatePreview();
}

std::vector<KeyMap::Rule> RemapDialog::Rules() const {
  std::vector<KeyMap::Rule> rules;
  for (int r = 0; r < rules_table->rowCount(); ++r) {
    QTableWidgetItem* p = rules_table->item(r, 0);
    QTableWidgetItem* s = rules_table->item(r, 1);
    if (p == nullptr || p->text().isEmpty()) continue;
    rules.push_back({p->text().toStdString(), s ? s->text().toStdString() : std::string()});
  }
  return rules;
}

void RemapDialog::SetRules(const std::vector<std::pair<QString, QString>>& rules) {
  QSignalBlocker block(rules_table);
  rules_table->setRowCount(0);
  for (const auto& [pattern, replacement] : rules) {
    const int r = rules_table->rowCount();
    rules_table->insertRow(r);
    rules_table->setItem(r, 0, new QTableWidgetItem(pattern));
    rules_table->setItem(r, 1, new QTableWidgetItem(replacement));
  }
  UpdatePreview();
}

void RemapDialog::UpdatePreview() {
  absl::Status s = preview_model->SetRules(Rules());
  rules_ok_ = s.ok();
  QString text;
  if (!s.ok()) {
    text = QString("<span style='color:#b00020'>%1</span> (the preview shows the last valid rules)")
               .arg(QString::fromStdString(std::string(s.message())).toHtmlEscaped());
  } else if (preview_model->collisions() > 0) {
    text = QString(
               "<span style='color:#b00020'><b>%1 key(s) collide</b></span>: two tensors would get "
               "the same "
               "name (highlighted). Apply is refused until the rules keep names distinct.")
               .arg(preview_model->collisions());
  } else {
    text = QString("%1 of %2 keys renamed.")
               .arg(preview_model->changed())
               .arg(preview_model->rowCount());
  }
  status_->setText(text);
  apply_button->setEnabled(!running_ && rules_ok_ && preview_model->collisions() == 0 &&
                           preview_model->changed() > 0 &&
                           !output_edit->text().trimmed().isEmpty());
}

QString RemapDialog::status_text() const {
  return status_->text();
}

bool RemapDialog::Apply() {
  if (running_) return false;
  UpdatePreview();
  if (!rules_ok_ || preview_model->collisions() > 0) return false;  // the reason is already shown
  if (preview_model->changed() == 0) {
    status_->setText("The rules rename no key: nothing to write.");
    return false;
  }
  absl::StatusOr<KeyMap> km = KeyMap::Create(Rules());
  if (!km.ok()) {
    status_->setText(QString::fromStdString(std::string(km.status().message())));
    return false;
  }
  running_ = true;
  apply_button->setEnabled(false);
  status_->setText("Writing the remapped checkpoint…");
  using Watcher = QFutureWatcher<absl::StatusOr<RemapResult>>;
  auto* watcher = new Watcher(this);
  connect(watcher, &Watcher::finished, this, [this, watcher] {
    watcher->deleteLater();
    running_ = false;
    absl::StatusOr<RemapResult> r = watcher->result();
    UpdatePreview();
    if (!r.ok()) {
      status_->setText(
          QString("<span style='color:#b00020'>%1</span>")
              .arg(QString::fromStdString(std::string(r.status().message())).toHtmlEscaped()));
      emit runFinished(false);
      return;
    }
    status_->setText(QString("Wrote %1 file(s) with %2 renamed key(s).")
                         .arg(r->files.size())
                         .arg(r->plan.changed));
    emit runFinished(true);
    emit remapped(output_edit->text().trimmed());
    accept();
  });
  std::shared_ptr<FileSystem> fs = fs_;
  const std::string input = layout_->root();
  const std::string output = output_edit->text().trimmed().toStdString();
  auto map = std::make_shared<KeyMap>(std::move(*km));
  const bool remote = !UrlScheme(input).empty();
  watcher->setFuture(QtConcurrent::run([fs, input, output, map, remote]() {
    RemapOptions o;
    if (remote) o.output_fs = &LocalFileSystem();  // remote input, local output
    return Remap(*fs, input, output, *map, o);
  }));
  return true;
}

}  // namespace safeshard::gui
