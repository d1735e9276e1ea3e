fn main() {
    std::process::exit(mongo_adls::cli::main());
}
