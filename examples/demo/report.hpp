#pragma once
// Progress bar, CSV of per-step metrics and the PNG plot (rendered by gnuplot).
#include <sys/stat.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace demo {

struct Row {
    int step = 0;
    double reward = 0, accuracy = 0, sample_acc = 0, kl = 0, clipfrac = 0, loss = 0, length = 0,
           seconds = 0;
};

struct Series {
    std::string name;
    std::vector<Row> rows;
};

class Progress {
public:
    Progress(int total, std::string name, bool quiet)
        : total_(total), name_(std::move(name)), quiet_(quiet), tty_(isatty(fileno(stderr)) != 0) {}
    void update(const Row& r) {
        if (quiet_) return;
        const int width = 24;
        const int done = total_ > 0 ? r.step * width / total_ : width;
        std::string bar(static_cast<std::size_t>(done), '#');
        bar.resize(width, '.');
        if (!tty_ && r.step % 10 != 0 && r.step != total_) return;
        std::fprintf(stderr,
                     "%s%-7s [%s] %3d/%d  reward %.3f  acc %.2f  kl %.4f  clip %.3f  %.1fs%s",
                     tty_ ? "\r" : "", name_.c_str(), bar.c_str(), r.step, total_, r.reward,
                     r.accuracy, r.kl, r.clipfrac, r.seconds, tty_ ? "" : "\n");
        std::fflush(stderr);
    }
    void done() {
        if (!quiet_ && tty_) std::fprintf(stderr, "\n");
    }

private:
    int total_;
    std::string name_;
    bool quiet_, tty_;
};

inline void write_outputs(const std::string& dir, const std::vector<Series>& all) {
    ::mkdir(dir.c_str(), 0755);
    const std::string csv = dir + "/metrics.csv";
    {
        std::ofstream f(csv);
        f << "objective,step,reward,accuracy,sample_accuracy,kl,pg_clipfrac,loss,response_length,"
             "seconds\n";
        for (const auto& s : all)
            for (const auto& r : s.rows)
                f << s.name << ',' << r.step << ',' << r.reward << ',' << r.accuracy << ','
                  << r.sample_acc << ',' << r.kl << ',' << r.clipfrac << ',' << r.loss << ','
                  << r.length << ',' << r.seconds << '\n';
    }
    std::printf("wrote %s\n", csv.c_str());
    // one data file per objective (gnuplot reads whitespace columns)
    std::string plot_acc, plot_rew;
    for (std::size_t k = 0; k < all.size(); ++k) {
        const std::string dat = dir + "/" + all[k].name + ".dat";
        std::ofstream f(dat);
        for (const auto& r : all[k].rows)
            f << r.step << ' ' << r.accuracy << ' ' << r.reward << ' ' << r.kl << '\n';
        const std::string sep = k ? ", " : "";
        plot_acc += sep + "'" + dat + "' using 1:2 with lines lw 2 title '" + all[k].name + "'";
        plot_rew += sep + "'" + dat + "' using 1:3 with lines lw 2 title '" + all[k].name + "'";
    }
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
        std::printf("gnuplot not found: no PNG (apt-get install gnuplot-nox)\n");
        return;
    }
    const std::string png = dir + "/demo.png", gp = dir + "/demo.gp";
    {
        std::ofstream f(gp);
        f << "set terminal pngcairo size 1000,420 font ',10' noenhanced\n"
          << "set output '" << png << "'\n"
          << "set multiplot layout 1,2 title 'rlpo demo: digits of a + b'\n"
          << "set grid\nset key bottom right\nset xlabel 'step'\n"
          << "set yrange [0:1.02]\n"
          << "set title 'greedy accuracy (exact match, 100 prompts)'\nplot " << plot_acc << "\n"
          << "set title 'mean reward of the sampled responses'\nplot " << plot_rew << "\n"
          << "unset multiplot\n";
    }
    // pngcairo when gnuplot has it, the plain png terminal otherwise
    std::string cmd =
        "gnuplot -e \"set terminal\" 2>&1 | grep -q pngcairo || sed -i 's/^set terminal "
        "pngcairo/set terminal png/' '" +
        gp + "'; gnuplot '" + gp + "'";
    if (std::system(cmd.c_str()) == 0)
        std::printf("wrote %s\n", png.c_str());
    else
        std::printf("gnuplot failed: no PNG\n");
}

}  // namespace demo
