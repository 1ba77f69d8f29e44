fn main() {
    println!("gitcap-server");
}
